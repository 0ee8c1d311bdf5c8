"""Where jobs (long work: video, images) are kept: one row per job, its params, progress, result and error.

``JobsStore`` is the interface ``runtime.jobs.Jobs`` needs; ``SqliteJobsStore`` keeps the rows in the daemon's SQLite
(one daemon). Several daemons sharing jobs would add a Redis implementation of the same few methods.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from tiqo.daemon.state.store import Store

COLUMNS = (
    "id",
    "user",
    "kind",
    "status",
    "step",
    "total",
    "stage",
    "eta_s",
    "created_at",
    "started_at",
    "finished_at",
    "params",
    "result",
    "meta",
    "error",
)
JSON_COLUMNS = {"params", "result", "meta", "error"}
UNFINISHED = ("queued", "in_progress")


class JobsStore(Protocol):
    def insert(self, row: dict[str, Any]) -> None: ...

    def update(self, job_id: str, fields: dict[str, Any]) -> None: ...

    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def page(
        self, user: str | None, kind: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` = (created_at, id) of the last row of the previous page."""
        ...

    def delete(self, job_id: str) -> None: ...

    def interrupt(self, now: float, error: dict[str, Any]) -> list[str]:
        """Rows a previous daemon left queued or in progress become failed with ``error``; their ids."""
        ...

    def finished_before(self, when: float, limit: int) -> list[str]:
        """Ids of jobs that finished before ``when``, oldest first."""
        ...

    def has(self, job_id: str) -> bool: ...


class SqliteJobsStore:
    """Jobs in the daemon's SQLite, used from the event loop only (like the rest of ``Store``)."""

    def __init__(self, store: Store) -> None:
        self.db = store.db

    def insert(self, row: dict[str, Any]) -> None:
        values = [_encode(c, row.get(c)) for c in COLUMNS]
        self.db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        names = [c for c in fields if c in COLUMNS and c != "id"]
        if not names:
            return
        sets = ", ".join(f"{c} = ?" for c in names)
        self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*(_encode(c, fields[c]) for c in names), job_id])

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _decode(row)

    def page(
        self, user: str | None, kind: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [_decode(r) for r in rows]

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def interrupt(self, now: float, error: dict[str, Any]) -> list[str]:
        marks = ", ".join("?" * len(UNFINISHED))
        ids = [r[0] for r in self.db.execute(f"SELECT id FROM jobs WHERE status IN ({marks})", UNFINISHED)]
        if ids:
            self.db.execute(
                f"UPDATE jobs SET status = 'failed', finished_at = ?, eta_s = NULL, error = ? "
                f"WHERE status IN ({marks})",
                (now, json.dumps(error), *UNFINISHED),
            )
        return ids

    def finished_before(self, when: float, limit: int) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
            (when, limit),
        )
        return [r[0] for r in rows]

    def has(self, job_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None


def _encode(column: str, value: Any) -> Any:
    if column in JSON_COLUMNS:
        if value is None and column in ("result", "error"):
            return None
        return json.dumps(value if value is not None else {}, separators=(",", ":"))
    return value


def _decode(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row, strict=True))
    for column in JSON_COLUMNS:
        if out[column] is not None:
            out[column] = json.loads(out[column])
    return out
