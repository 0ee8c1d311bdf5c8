"""What a job is: its row (as stored and as it changes), the :class:`Job` callers see, and the errors every daemon
writes into a row the same way."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from tiqo.core.errors import TiqoError

FINISHED = frozenset(("completed", "failed", "cancelled"))
MAX_LIMIT = 100
MAX_STAGE = 100
JOB_ID = re.compile(r"job_[0-9a-f]{32}")
INTERRUPTED = "the daemon stopped while this job {was}; submit it again"


@dataclass(frozen=True)
class Job:
    id: str
    user: str
    kind: str
    status: str  # queued / in_progress / completed / failed / cancelled
    progress: int  # 0-100
    step: int
    total: int
    stage: str
    eta_s: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    meta: dict[str, Any]
    error: dict[str, Any] | None
    expires_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def event(self) -> dict[str, Any]:
        """What a ``job`` event carries (never the params or the result: events go to every tab of the owner)."""
        data = {k: getattr(self, k) for k in ("id", "user", "kind", "status", "progress", "step", "total")}
        data.update(eta_s=self.eta_s, stage=self.stage)
        if self.error is not None:
            data["error"] = self.error
        return data


JobList = list[Job]


def new_row(kind: str, user: str, params: dict[str, Any], meta: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The row of a job just submitted: queued, no progress yet."""
    return {
        "id": "job_" + uuid.uuid4().hex,
        "user": user,
        "kind": kind,
        "status": "queued",
        "step": 0,
        "total": 0,
        "stage": "",
        "eta_s": None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "params": params,
        "result": None,
        "meta": dict(meta or {}),
        "error": None,
    }


def job_of(row: dict[str, Any], keep_s: float) -> Job:
    """The :class:`Job` of a row: progress in percent, and when a finished job expires (``keep_s`` after)."""
    total, step, status = int(row["total"]), int(row["step"]), row["status"]
    progress = 100 if status == "completed" else (min(100, step * 100 // total) if total else 0)
    finished_at = row["finished_at"]
    return Job(
        id=row["id"],
        user=row["user"],
        kind=row["kind"],
        status=status,
        progress=progress,
        step=step,
        total=total,
        stage=row["stage"],
        eta_s=row["eta_s"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=finished_at,
        params=row["params"],
        result=row["result"],
        meta=row["meta"],
        error=row["error"],
        expires_at=None if finished_at is None else finished_at + keep_s,
    )


def tiqo_error(exc: TiqoError) -> dict[str, Any]:
    """A failed job's error, as the API shows errors (the hint only when there is one)."""
    return {"code": exc.code, "message": exc.message, **({"hint": exc.hint} if exc.hint else {})}


def internal_error(exc: Exception) -> dict[str, Any]:
    """A job that died of an unexpected exception: a bug, said plainly."""
    return {
        "code": "internal_error",
        "message": f"{type(exc).__name__}: {exc}",
        "hint": "this is a bug in tiqo or an engine; details are in `tiqo daemon logs`",
    }


def interrupted(was: str) -> dict[str, Any]:
    """The error of a job a daemon stopped under (at shutdown, or found unfinished at the next start-up)."""
    return {
        "code": "interrupted",
        "message": INTERRUPTED.format(was=was),
        "hint": "submit it again; see `tiqo daemon logs` for why the daemon stopped",
    }
