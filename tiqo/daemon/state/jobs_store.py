"""Where jobs (long work: video, images) are kept: one row per job, its params, progress, result and error.

``JobsStore`` is the interface ``runtime.jobs.Jobs`` needs; ``SqliteJobsStore`` keeps the rows in the daemon's SQLite
(one daemon). ``redis_jobs.RedisJobsStore`` shares them between daemons (``state.backend = redis``): each row then
names the daemon that runs the job (``DaemonIdentity``), which alone holds its files and its running work.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class DaemonIdentity:
    """Who runs a job. ``id`` stays the same across restarts of one daemon (its host and state folder), so a daemon
    that restarts finds the jobs its previous run left unfinished, and only those."""

    id: str
    host: str
    pid: int

    def stamp(self) -> dict[str, Any]:
        return {"daemon": self.id, "host": self.host, "pid": self.pid}


def daemon_identity(state_dir: Path) -> DaemonIdentity:
    host = socket.gethostname()
    where = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return DaemonIdentity(f"{host}/{where}", host, os.getpid())


class JobsStore(Protocol):
    identity: DaemonIdentity | None  # None: one daemon, every row is its own

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

    def request_cancel(self, job_id: str) -> None:
        """Ask the daemon that runs ``job_id`` (another one) to stop it at its next step."""
        ...

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Which of this daemon's ``job_ids`` another daemon asked to cancel (polled; also a chance to resync)."""
        ...


class SqliteJobsStore:
    """Jobs in the daemon's SQLite, used from the event loop only (like the rest of ``Store``)."""

    identity: DaemonIdentity | None = None

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

    def request_cancel(self, job_id: str) -> None:
        return None  # one daemon: every job is its own, cancelled in memory

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        return set()


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
