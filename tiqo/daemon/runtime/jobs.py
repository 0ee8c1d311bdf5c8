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

This module is the manager (queue, runs, reading and changing jobs); ``job_record`` holds the row and :class:`Job`,
``job_progress`` the handle and the throttle, ``job_files`` the job folders.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest, Busy, Cancelled, NotFound, TiqoError
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.runtime.job_files import JobFolders, elsewhere, remove_all
from tiqo.daemon.runtime.job_progress import JobHandle, LiveJob, Throttle, Work
from tiqo.daemon.runtime.job_record import (
    FINISHED,
    MAX_LIMIT,
    Job,
    JobList,
    internal_error,
    interrupted,
    job_of,
    new_row,
    tiqo_error,
)
from tiqo.daemon.state.jobs_store import JobsStore, SqliteJobsStore
from tiqo.daemon.state.store import Store

__all__ = ["MAX_LIMIT", "Job", "JobHandle", "JobList", "Jobs", "Work"]

log = logging.getLogger("tiqo.jobs")

SWEEP_INTERVAL_S = 600.0  # how often expired jobs are looked for
SWEEP_BATCH = 500
CANCEL_WAIT_S = 5.0  # cancel() waits this long for the work to reach its next step and stop
REMOVE_WAIT_S = 30.0  # remove() waits this long for running work before deleting its files anyway
CLOSE_WAIT_S = 5.0  # at shutdown, running work gets this long to stop by itself before it is cancelled
CANCEL_POLL_S = 0.5  # with a shared store: how often this daemon looks for cancels asked on other daemons
REMOTE_POLL_S = 0.25  # waiting on another daemon's job: how often its row is read again
LIST_HINT = "see your jobs with `tiqo jobs list`"

Paths = list[Path]  # (``Jobs.list`` hides the builtin inside the class)


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
        self.folders = JobFolders(root)
        self.keep_s = keep_s
        self.max_active = max(1, max_active)
        self.max_queued = max(0, max_queued)
        self.clock = clock
        self._live: dict[str, LiveJob] = {}
        self._active: set[str] = set()
        self._queue: collections.deque[LiveJob] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._cancel_watch: asyncio.Task[None] | None = None
        self._closing = False
        self._throttle = Throttle(self.store, self._publish)
        self._start_up()

    # ------------------------------------------------------------ start-up and expiry
    def _start_up(self) -> None:
        """Jobs a previous daemon left unfinished are failed ("interrupted"), never silently lost; expired jobs and
        folders without a job (a removal cut short) go."""
        now = self.clock()
        ids = self.store.interrupt(now, interrupted("was running or waiting"))
        if ids:
            log.warning("%d job(s) were unfinished when the daemon last stopped; marked failed (interrupted)", len(ids))
        remove_all(self.sweep())
        self.folders.remove_orphans(self.store.has)

    def sweep(self) -> Paths:
        """Delete the rows of jobs finished more than ``keep_s`` ago; their folders, for the caller to remove."""
        folders: Paths = []
        for job_id in self.store.finished_before(self.clock() - self.keep_s, SWEEP_BATCH):
            if job_id not in self._live:
                self.store.delete(job_id)
                folders.append(self.folders.path(job_id))
        return folders

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                folders = self.sweep()
                if folders:
                    await asyncio.to_thread(remove_all, folders)
                    log.info("removed %d expired job(s)", len(folders))
            except Exception:  # a failed sweep is retried next time; the daemon goes on
                log.exception("sweeping expired jobs failed")

    def _on_loop(self) -> None:
        if self._loop is None:
            self._loop = self._throttle.loop = asyncio.get_running_loop()
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

    def _stop(self, live: LiveJob) -> None:
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
        row = new_row(kind, user, params, meta, self.clock())
        if self.store.identity is not None:
            row.update(self.store.identity.stamp())
        self.store.insert(row)
        live = LiveJob(row, work)
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

    def _start(self, live: LiveJob) -> None:
        assert self._loop is not None
        job_id = live.row["id"]
        folder = self.folders.make(job_id)
        with live.lock:
            live.row.update(status="in_progress", started_at=self.clock())
        live.started_mono = time.monotonic()
        self._active.add(job_id)
        self.store.update(job_id, {"status": "in_progress", "started_at": live.row["started_at"]})
        self._publish(live)
        live.task = self._loop.create_task(
            self._run(live, JobHandle(self._throttle, live, folder)), name=f"tiqo {job_id}"
        )

    async def _run(self, live: LiveJob, handle: JobHandle) -> None:
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
            error = tiqo_error(exc)
        except Exception as exc:
            log.exception("job %s (%s) failed", live.row["id"], live.row["kind"])
            error = internal_error(exc)
        if status == "cancelled" and self._closing:
            status, error = "failed", interrupted("was running")
        self._finish(live, status, result if status == "completed" else None, error)

    def _finish(self, live: LiveJob, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
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

    def _publish(self, live: LiveJob) -> None:
        self.events.publish("job", self._job(live.snapshot()).event())

    # ------------------------------------------------------------ reading
    def _job(self, row: dict[str, Any]) -> Job:
        return job_of(row, self.keep_s)

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
            raise elsewhere(row, "files")
        return self.folders.file(job_id, name)

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
            raise elsewhere(row, "work and files")
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
        await self.folders.remove(job_id)
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
            self._finish(self._queue.popleft(), "failed", None, interrupted("was waiting to start"))
        running = [live for live in self._live.values() if live.task is not None]
        for live in running:
            live.stop.set()
        tasks = [live.task for live in running if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
