"""Jobs: tiqo's one mechanism for long work (video, images). A job belongs to a user, runs in the background, reports
progress (step, total, ETA) as ``job`` events, can be cancelled between steps, and keeps its result files under
``<state_dir>/jobs/<id>/`` until it is removed or expires.

A work function receives a :class:`JobHandle`; it offloads engine calls to threads, and those threads call
``handle.progress`` (thread-safe: it only records and wakes the loop once). Events are throttled to
``EVENT_INTERVAL_S`` per job and SQLite writes to ``STORE_INTERVAL_S``; status changes go out at once. At most
``max_active`` jobs run; up to ``max_queued`` more wait in order; beyond that a submit is refused with 503. The
client that submitted a job holds nothing of it: hanging up stops nothing.

With a shared store (``state.backend = redis``) every daemon sees every job's status and progress; the daemon that
runs a job alone holds its work and its files. Elsewhere a cancel is passed on (the runner polls for it every
``CANCEL_POLL_S`` and stops at the next step), a wait polls the store, and files or a removal get a 409 naming the
host that has them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest, Busy, Cancelled, Conflict, NotFound, TiqoError
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.state.jobs_store import JobsStore, SqliteJobsStore
from tiqo.daemon.state.store import Store
from tiqo.sdk.engine import StopFlag

log = logging.getLogger("tiqo.jobs")

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
FINISHED = frozenset(("completed", "failed", "cancelled"))
EVENT_INTERVAL_S = 0.1  # progress events per job: at most 10 a second (status changes are never held back)
STORE_INTERVAL_S = 0.5  # progress writes to SQLite per job: at most 2 a second
SWEEP_INTERVAL_S = 600.0  # how often expired jobs are looked for
SWEEP_BATCH = 500
CANCEL_WAIT_S = 5.0  # cancel() waits this long for the work to reach its next step and stop
REMOVE_WAIT_S = 30.0  # remove() waits this long for running work before deleting its files anyway
CLOSE_WAIT_S = 5.0  # at shutdown, running work gets this long to stop by itself before it is cancelled
CANCEL_POLL_S = 0.5  # with a shared store: how often this daemon looks for cancels asked on other daemons
REMOTE_POLL_S = 0.25  # waiting on another daemon's job: how often its row is read again
MAX_LIMIT = 100
MAX_STAGE = 100
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
JOB_ID = re.compile(r"job_[0-9a-f]{32}")
INTERRUPTED = "the daemon stopped while this job {was}; submit it again"
LIST_HINT = "see your jobs with `tiqo jobs list`"

Work = Callable[["JobHandle"], Awaitable[dict[str, Any]]]
Paths = list[Path]  # (``Jobs.list`` hides the builtin inside the class)


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


class _Live:
    """A queued or running job: its row as it changes, its stop flag, and what the throttles need. Engine threads
    write ``row`` (under ``lock``); everything else is touched on the event loop only."""

    def __init__(self, row: dict[str, Any], work: Work) -> None:
        self.row = row
        self.work = work
        self.lock = threading.Lock()
        self.stop = StopFlag()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.started_mono = 0.0
        self.anchor: tuple[float, int] | None = None  # (monotonic time, step) of the first progress report
        self.woken = False  # a wake-up is already on its way to the loop
        self.event_dirty = self.store_dirty = False
        self.event_at = self.stored_at = -math.inf
        self.timer: asyncio.TimerHandle | None = None
        self.removed = False

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.row, "meta": dict(self.row["meta"])}


class JobHandle:
    """What a work function gets: where to put files, the stop flag, and ways to report progress and metadata."""

    def __init__(self, jobs: Jobs, live: _Live, directory: Path) -> None:
        self._jobs = jobs
        self._live = live
        self.id: str = live.row["id"]
        self.user: str = live.row["user"]
        self.kind: str = live.row["kind"]
        self.dir = directory
        self.stop = live.stop

    def progress(self, step: int, total: int, stage: str = "") -> None:
        """``step`` of ``total`` done (thread-safe; call it from engine threads as often as steps end)."""
        self._jobs._progress(self._live, step, total, stage)

    def check(self) -> None:
        """Raise :class:`Cancelled` when the job's owner cancelled it (call it between steps)."""
        if self.stop.is_set():
            raise Cancelled("the job was cancelled", hint="submit it again to start over")

    def note(self, **fields: Any) -> None:
        """Merge ``fields`` (JSON values: model, device, seed, steps, ...) into the job's metadata (thread-safe)."""
        json.dumps(fields)  # a value JSON cannot hold is the caller's bug: say so here, not at the next write
        live = self._live
        with live.lock:
            live.row["meta"] = {**live.row["meta"], **fields}
            live.store_dirty = True
        self._jobs._wake(live)


class Jobs:
    def __init__(
        self,
        store_or_path: Store | JobsStore | Path,
        events: EventBus,
        root: Path,
        *,
        keep_s: float,
        max_active: int,
        max_queued: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(store_or_path, Path):
            store_or_path = Store(store_or_path)
        self.store: JobsStore = SqliteJobsStore(store_or_path) if isinstance(store_or_path, Store) else store_or_path
        self.events = events
        self.root = root
        self.keep_s = keep_s
        self.max_active = max(1, max_active)
        self.max_queued = max(0, max_queued)
        self.clock = clock
        self._live: dict[str, _Live] = {}
        self._active: set[str] = set()
        self._queue: collections.deque[_Live] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._cancel_watch: asyncio.Task[None] | None = None
        self._closing = False
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        self._start_up()

    # ------------------------------------------------------------ start-up and expiry
    def _start_up(self) -> None:
        """Jobs a previous daemon left unfinished are failed ("interrupted"), never silently lost; expired jobs and
        folders without a job (a removal cut short) go."""
        now = self.clock()
        ids = self.store.interrupt(now, _interrupted("was running or waiting"))
        if ids:
            log.warning("%d job(s) were unfinished when the daemon last stopped; marked failed (interrupted)", len(ids))
        for folder in self.sweep():
            shutil.rmtree(folder, ignore_errors=True)
        for entry in os.scandir(self.root):
            if JOB_ID.fullmatch(entry.name) and not self.store.has(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)

    def sweep(self) -> Paths:
        """Delete the rows of jobs finished more than ``keep_s`` ago; their folders, for the caller to remove."""
        folders: Paths = []
        for job_id in self.store.finished_before(self.clock() - self.keep_s, SWEEP_BATCH):
            if job_id not in self._live:
                self.store.delete(job_id)
                folders.append(self.root / job_id)
        return folders

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                folders = self.sweep()
                if folders:
                    await asyncio.to_thread(_remove_all, folders)
                    log.info("removed %d expired job(s)", len(folders))
            except Exception:  # a failed sweep is retried next time; the daemon goes on
                log.exception("sweeping expired jobs failed")

    def _on_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._sweeper is None and not self._closing:
            self._sweeper = self._loop.create_task(self._sweep_forever())
        if self._cancel_watch is None and self.store.identity is not None and not self._closing:
            self._cancel_watch = self._loop.create_task(self._watch_cancels())

    async def _watch_cancels(self) -> None:
        """Cancels asked on other daemons reach this one's jobs here (a flag in the shared store)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                for job_id in self.store.cancel_requested(list(self._live)):
                    live = self._live.get(job_id)
                    if live is not None:
                        log.info("job %s: cancelled from another daemon", job_id)
                        self._stop(live)
            except Exception:  # the next poll tries again
                log.exception("looking for cancels of jobs failed")

    def _stop(self, live: _Live) -> None:
        live.stop.set()
        if live in self._queue:
            self._queue.remove(live)
            self._finish(live, "cancelled", None, None)

    # ------------------------------------------------------------ submit and run
    async def submit(
        self, kind: str, user: str, params: dict[str, Any], work: Work, *, meta: dict[str, Any] | None = None
    ) -> Job:
        """Queue ``work`` as a job of ``user``; it starts at once when fewer than ``max_active`` jobs run."""
        self._on_loop()
        if self._closing:
            raise Busy("the daemon is stopping", hint="submit the job again once it is back", retry_after=5)
        if len(self._active) >= self.max_active and len(self._queue) >= self.max_queued:
            raise Busy(
                f"{len(self._queue)} job(s) are already waiting (jobs.max_queued = {self.max_queued})",
                hint="try again later, cancel one with `tiqo jobs cancel ID`, or raise jobs.max_queued",
                retry_after=self._retry_after(),
            )
        json.dumps(params)
        json.dumps(meta or {})
        row: dict[str, Any] = {
            "id": "job_" + uuid.uuid4().hex,
            "user": user,
            "kind": kind,
            "status": "queued",
            "step": 0,
            "total": 0,
            "stage": "",
            "eta_s": None,
            "created_at": self.clock(),
            "started_at": None,
            "finished_at": None,
            "params": params,
            "result": None,
            "meta": dict(meta or {}),
            "error": None,
        }
        if self.store.identity is not None:
            row.update(self.store.identity.stamp())
        self.store.insert(row)
        live = _Live(row, work)
        self._live[row["id"]] = live
        if len(self._active) < self.max_active:
            self._start(live)
        else:
            self._queue.append(live)
            self._publish(live)
        return self._job(live.snapshot())

    def _retry_after(self) -> float:
        etas = [e for e in (self._live[i].row["eta_s"] for i in self._active) if e is not None]
        return max(1.0, min(etas)) if etas else 10.0

    def _start(self, live: _Live) -> None:
        assert self._loop is not None
        job_id = live.row["id"]
        folder = self.root / job_id
        folder.mkdir(mode=0o700, exist_ok=True)
        with live.lock:
            live.row.update(status="in_progress", started_at=self.clock())
        live.started_mono = time.monotonic()
        self._active.add(job_id)
        self.store.update(job_id, {"status": "in_progress", "started_at": live.row["started_at"]})
        self._publish(live)
        live.task = self._loop.create_task(self._run(live, JobHandle(self, live, folder)), name=f"tiqo {job_id}")

    async def _run(self, live: _Live, handle: JobHandle) -> None:
        status, result, error = "failed", None, None
        try:
            result = await live.work(handle)
            if live.stop.is_set():
                status = "cancelled"
            elif not isinstance(result, dict):
                raise TypeError(f"the work function returned {type(result).__name__}, not a dict")
            else:
                json.dumps(result)
                status = "completed"
        except Cancelled:
            status = "cancelled"
        except asyncio.CancelledError:
            status = "cancelled"  # only close() cancels the task: recorded as interrupted below
        except TiqoError as exc:
            error = {"code": exc.code, "message": exc.message, **({"hint": exc.hint} if exc.hint else {})}
        except Exception as exc:
            log.exception("job %s (%s) failed", live.row["id"], live.row["kind"])
            error = {
                "code": "internal_error",
                "message": f"{type(exc).__name__}: {exc}",
                "hint": "this is a bug in tiqo or an engine; details are in `tiqo daemon logs`",
            }
        if status == "cancelled" and self._closing:
            status, error = "failed", _interrupted("was running")
        self._finish(live, status, result if status == "completed" else None, error)

    def _finish(self, live: _Live, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        job_id = live.row["id"]
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        with live.lock:
            live.row.update(status=status, result=result, error=error, finished_at=self.clock(), eta_s=None)
            if status == "completed":
                live.row["step"] = live.row["total"]
        self._live.pop(job_id, None)
        self._active.discard(job_id)
        row = live.snapshot()
        if not live.removed:
            self.store.update(job_id, row)
            self._publish(live)
        live.done.set()
        self._start_next()

    def _start_next(self) -> None:
        while self._queue and len(self._active) < self.max_active and not self._closing:
            self._start(self._queue.popleft())

    # ------------------------------------------------------------ progress (engine threads)
    def _progress(self, live: _Live, step: int, total: int, stage: str) -> None:
        now = time.monotonic()
        total = max(0, int(total))
        step = max(0, int(step))
        if total:
            step = min(step, total)
        with live.lock:
            if live.anchor is None or step < live.anchor[1]:
                live.anchor = (now, step)
            anchor_t, anchor_step = live.anchor
            eta: float | None = None
            if total and step > anchor_step:
                eta = (now - anchor_t) / (step - anchor_step) * (total - step)
            elif total and step:
                eta = (now - live.started_mono) / step * (total - step)
            live.row.update(step=step, total=total, stage=str(stage)[:MAX_STAGE], eta_s=_round(eta))
            live.event_dirty = live.store_dirty = True
        self._wake(live)

    def _wake(self, live: _Live) -> None:
        """Have the loop flush ``live`` soon; many reports between two flushes cost one wake-up."""
        with live.lock:
            if live.woken:
                return
            live.woken = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._flush, live)

    def _flush(self, live: _Live) -> None:
        with live.lock:
            live.woken = False
        live.timer = None
        if live.row["status"] in FINISHED or live.removed:
            return
        mono, waits = time.monotonic(), []
        if live.event_dirty:
            due = live.event_at + EVENT_INTERVAL_S - mono
            if due <= 0:
                live.event_dirty, live.event_at = False, mono
                self._publish(live)
            else:
                waits.append(due)
        if live.store_dirty:
            due = live.stored_at + STORE_INTERVAL_S - mono
            if due <= 0:
                live.store_dirty, live.stored_at = False, mono
                row = live.snapshot()
                self.store.update(row["id"], {k: row[k] for k in ("step", "total", "stage", "eta_s", "meta")})
            else:
                waits.append(due)
        if waits and self._loop is not None:
            live.timer = self._loop.call_later(min(waits), self._flush, live)

    def _publish(self, live: _Live) -> None:
        self.events.publish("job", self._job(live.snapshot()).event())

    # ------------------------------------------------------------ reading
    def _job(self, row: dict[str, Any]) -> Job:
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
            expires_at=None if finished_at is None else finished_at + self.keep_s,
        )

    def _row(self, job_id: str, user: str | None) -> dict[str, Any]:
        live = self._live.get(job_id)
        row = live.snapshot() if live is not None else self.store.get(job_id)
        if row is None or (user is not None and row["user"] != user):
            raise NotFound(f"no job {job_id!r}", param="id", hint=LIST_HINT)
        return row

    def _elsewhere(self, row: dict[str, Any]) -> bool:
        """Whether another daemon runs (or ran) the job: its work and files are there."""
        me = self.store.identity
        return me is not None and row.get("daemon", me.id) != me.id

    def _there(self, row: dict[str, Any], what: str) -> Conflict:
        host, job_id = row.get("host") or "?", row["id"]
        return Conflict(
            f"the {what} of job {job_id} are on host {host} (daemon {row.get('daemon')}, pid {row.get('pid')}), "
            "not on this daemon",
            code="job_elsewhere",
            hint=f"ask the daemon on {host}, or have the proxy route requests for {job_id} to it",
        )

    def get(self, job_id: str, user: str | None) -> Job:
        """The job, if it exists and is ``user``'s (None: any user's). Another user's job is as unknown as one that
        never existed (404), so ids reveal nothing."""
        return self._job(self._row(job_id, user))

    def list(
        self, user: str | None, *, kind: str | None = None, limit: int = 20, after: str | None = None
    ) -> list[Job]:
        """``user``'s jobs, newest first; ``after`` (a job id of the previous page) pages on."""
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
        before = None
        if after is not None:
            cursor = self._row(after, user)
            before = (cursor["created_at"], cursor["id"])
        rows = self.store.page(user, kind, limit, before)
        return [self._job(self._live[r["id"]].snapshot() if r["id"] in self._live else r) for r in rows]

    def file(self, job_id: str, user: str | None, name: str) -> Path:
        """A result file of the job (a plain file directly in its folder); NotFound when there is none, Conflict when
        another daemon made it (the files stay on that machine)."""
        row = self._row(job_id, user)
        if self._elsewhere(row):
            raise self._there(row, "files")
        if not FILE_NAME.fullmatch(name) or ".." in name:
            raise BadRequest(
                f"{name[:80]!r} is not a job file name",
                param="name",
                hint="use a name from the job's result.files (letters, digits, '.', '_', '-'), e.g. video.mp4",
            )
        path = self.root / job_id / name
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise NotFound(f"job {job_id} has no file {name!r}", param="name", hint="see the job's result.files")
        return path

    # ------------------------------------------------------------ changing
    async def cancel(self, job_id: str, user: str | None) -> Job:
        """A queued job is cancelled at once; a running one stops at its next step (waited for up to
        ``CANCEL_WAIT_S``). A finished job is left as it is."""
        self._on_loop()
        row = self._row(job_id, user)
        live = self._live.get(job_id)
        if live is not None:
            self._stop(live)
            if not live.done.is_set():
                await _wait(live.done, CANCEL_WAIT_S)
        elif self._elsewhere(row) and row["status"] not in FINISHED:
            self.store.request_cancel(job_id)
            return await self._poll(job_id, user, CANCEL_WAIT_S)
        return self.get(job_id, user)

    async def _poll(self, job_id: str, user: str | None, timeout: float | None) -> Job:
        """Another daemon's job, once finished or after ``timeout`` seconds, read again from the shared store."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id, user)
        while not job.finished and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(REMOTE_POLL_S if deadline is None else min(REMOTE_POLL_S, deadline - time.monotonic()))
            job = self.get(job_id, user)
        return job

    async def remove(self, job_id: str, user: str | None) -> Job:
        """Cancel the job if it is unfinished, then delete it and its files; the job as it last was."""
        self._on_loop()
        row = self._row(job_id, user)
        if self._elsewhere(row):
            raise self._there(row, "work and files")
        job = self._job(row)
        live = self._live.get(job_id)
        if live is not None:
            live.stop.set()
            if live in self._queue:
                self._queue.remove(live)
                self._finish(live, "cancelled", None, None)
            elif not await _wait(live.done, REMOVE_WAIT_S):
                log.warning("job %s did not stop within %gs; removing it anyway", job_id, REMOVE_WAIT_S)
                live.removed = True
            job = self._job(live.snapshot())
        self.store.delete(job_id)
        await asyncio.to_thread(shutil.rmtree, self.root / job_id, ignore_errors=True)
        self.events.publish("job", {**job.event(), "status": "removed"})
        return job

    async def wait(self, job_id: str, user: str | None, timeout: float | None) -> Job:
        """The job once it has finished, or as it is after ``timeout`` seconds (None: no limit)."""
        self._on_loop()
        row = self._row(job_id, user)
        live = self._live.get(job_id)
        if live is not None and timeout != 0:
            await _wait(live.done, timeout)
        elif live is None and self._elsewhere(row) and timeout != 0:
            return await self._poll(job_id, user, timeout)
        return self.get(job_id, user)

    @property
    def counts(self) -> dict[str, int]:
        return {"active": len(self._active), "queued": len(self._queue)}

    async def close(self) -> None:
        """Shutdown: waiting jobs fail as interrupted, running ones are asked to stop, then cancelled."""
        self._closing = True
        for task in (self._sweeper, self._cancel_watch):
            if task is not None:
                task.cancel()
        while self._queue:
            self._finish(self._queue.popleft(), "failed", None, _interrupted("was waiting to start"))
        running = [live for live in self._live.values() if live.task is not None]
        for live in running:
            live.stop.set()
        tasks = [live.task for live in running if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _interrupted(was: str) -> dict[str, Any]:
    return {
        "code": "interrupted",
        "message": INTERRUPTED.format(was=was),
        "hint": "submit it again; see `tiqo daemon logs` for why the daemon stopped",
    }


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _remove_all(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
