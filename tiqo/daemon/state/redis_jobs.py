"""Jobs shared by every daemon on one Redis (``state.backend = redis``): any daemon answers a job's status and
progress, whichever daemon runs it. Result files and the running work stay with the daemon that runs the job (the
row names it: ``daemon``, ``host``, ``pid``).

| key | holds | expires |
| --- | --- | --- |
| ``PREFIX:job:{ID}`` | the row, a hash of JSON values | ``RUNNING_TTL_S`` after each write, jobs.keep once done |
| ``PREFIX:job:{ID}:cancel`` | a cancel asked on another daemon | ``RUNNING_TTL_S`` |
| ``PREFIX:jobs:{u:USER}``, ``PREFIX:jobs:{all}`` | ids by creation time | jobs.keep + ``RUNNING_TTL_S`` |
| ``PREFIX:jobs:{d:DAEMON}`` | that daemon's unfinished ids (start-up marks them) | jobs.keep + ``RUNNING_TTL_S`` |

The daemon that runs a job writes it to its own SQLite first (the local view) and pushes the whole row to Redis on
each write (progress writes are throttled to 2 a second per job), so a Redis that lost its data or was away gets the
row back at the next write. Redis down: a submit fails closed (503 naming the fix); reads answer from this daemon's
own rows where they can (its jobs), and a 503 where they cannot (another daemon's job); writes wait and are pushed
again once Redis answers.

redis-py is imported only when this module is.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from tiqo.core.errors import StateUnavailable
from tiqo.daemon.state.jobs_store import COLUMNS, UNFINISHED, DaemonIdentity, JobsStore
from tiqo.daemon.state.redis_counters import HINT, RedisCounters, for_each

log = logging.getLogger("tiqo.jobs")

RUNNING_TTL_S = 86400  # an unfinished row whose daemon stopped writing (it died for good) goes after a day
IDENTITY = ("daemon", "host", "pid")
BACKOFF_S = 5.0  # after a failed write, background writes and cancel polls leave Redis alone this long
SCAN_BATCH = 200
MAX_SCAN = 5000  # ids one page may look at (a kind filter skips rows): bounds the work of one list call


class RedisJobsStore:
    """The ``JobsStore`` of several daemons: Redis for every daemon's rows, ``local`` (SQLite) for this one's."""

    def __init__(self, counters: RedisCounters, local: JobsStore, identity: DaemonIdentity, *, keep_s: float) -> None:
        self.client = counters.client
        self.prefix = counters.prefix
        self.url = counters.url
        self.local = local
        self.identity: DaemonIdentity | None = identity
        self.me = identity
        self.keep_s = max(1, int(keep_s))
        self._unsynced: set[str] = set()  # own jobs whose last write did not reach Redis
        self._warned_at = 0.0
        self._down_until = 0.0  # the event loop must not wait on a dead Redis for every progress write

    # ------------------------------------------------------------ keys
    def _row_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def _cancel_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}:cancel"

    def _index(self, user: str | None) -> str:
        return f"{self.prefix}:jobs:{{all}}" if user is None else f"{self.prefix}:jobs:{{u:{user}}}"

    def _mine(self) -> str:
        return f"{self.prefix}:jobs:{{d:{self.me.id}}}"

    def _unavailable(self, what: str, exc: Exception, hint: str = HINT) -> StateUnavailable:
        return StateUnavailable(
            f"cannot reach the Redis server that holds the jobs ({self.url}) to {what}: {exc}", hint=hint, retry_after=5
        )

    def _degraded(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 30:
            self._warned_at = now
            log.warning("jobs: Redis (%s) unreachable while %s (%s); answering from this daemon's rows. %s",
                        self.url, what, exc, HINT)  # fmt: skip

    # ------------------------------------------------------------ writes (own jobs)
    def _push(self, pipe: Any, row: dict[str, Any]) -> None:
        """Queue the whole row (with this daemon's identity) and its index entries on ``pipe``."""
        job_id = row["id"]
        full = {**{c: row.get(c) for c in COLUMNS}, **self.me.stamp()}
        key = self._row_key(job_id)
        pipe.hset(key, mapping={k: json.dumps(v, separators=(",", ":")) for k, v in full.items()})
        finished = row.get("status") not in UNFINISHED
        pipe.expire(key, self.keep_s if finished else RUNNING_TTL_S)
        index_ttl = self.keep_s + RUNNING_TTL_S
        for index in (self._index(row["user"]), self._index(None)):
            pipe.zadd(index, {job_id: float(row["created_at"])})
            pipe.expire(index, index_ttl)
        if finished:
            pipe.srem(self._mine(), job_id)
            pipe.delete(self._cancel_key(job_id))
        else:
            pipe.sadd(self._mine(), job_id)
            pipe.expire(self._mine(), index_ttl)

    def _sync(self, ids: set[str]) -> bool:
        """Push this daemon's rows ``ids`` (and any that missed Redis before) in one round trip."""
        todo = ids | self._unsynced
        if time.monotonic() < self._down_until:
            self._unsynced = todo
            return False
        rows = [(i, self.local.get(i)) for i in todo]
        pipe = self.client.pipeline(transaction=False)
        for job_id, row in rows:
            if row is None:  # removed meanwhile: make sure Redis forgets it too
                pipe.delete(self._row_key(job_id), self._cancel_key(job_id))
                pipe.srem(self._mine(), job_id)
            else:
                self._push(pipe, row)
        try:
            pipe.execute()
        except RedisError as exc:
            self._unsynced = todo
            self._down_until = time.monotonic() + BACKOFF_S
            self._degraded("writing jobs", exc)
            return False
        self._unsynced = set()
        return True

    def insert(self, row: dict[str, Any]) -> None:
        """Fail closed: a job no other daemon could see or cancel is refused, not half-shared."""
        pipe = self.client.pipeline(transaction=False)
        self._push(pipe, row)
        try:
            pipe.execute()
        except RedisError as exc:
            raise self._unavailable("submit a job", exc) from exc
        self.local.insert(row)

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.local.update(job_id, fields)
        self._sync({job_id})

    def delete(self, job_id: str) -> None:
        self.local.delete(job_id)
        self._sync({job_id})

    def interrupt(self, now: float, error: dict[str, Any]) -> list[str]:
        """This daemon's unfinished jobs (its previous run's: one daemon per state folder): failed, here and in
        Redis. Another daemon's jobs are left alone, running or not."""
        ids = self.local.interrupt(now, error)
        try:
            stale = {str(i) for i in self.client.smembers(self._mine())} - set(ids)
            if stale:  # in Redis but not in the local view (its SQLite was replaced): fail them where they are
                statuses = for_each(self.client, [self._row_key(j) for j in stale], lambda p, k: p.hget(k, "status"))
                pipe = self.client.pipeline(transaction=False)
                for job_id, status in zip(stale, statuses, strict=True):
                    if status is not None and json.loads(status) in UNFINISHED:
                        failed = {"status": "failed", "finished_at": now, "eta_s": None, "error": error}
                        pipe.hset(self._row_key(job_id), mapping={k: json.dumps(v) for k, v in failed.items()})
                        pipe.expire(self._row_key(job_id), self.keep_s)
                    pipe.srem(self._mine(), job_id)
                pipe.execute()
        except RedisError as exc:
            self._degraded("marking interrupted jobs", exc)
        self._sync(set(ids))
        return ids

    def request_cancel(self, job_id: str) -> None:
        try:
            self.client.set(self._cancel_key(job_id), "1", ex=RUNNING_TTL_S)
        except RedisError as exc:
            raise self._unavailable("pass the cancel on to the daemon that runs the job", exc) from exc

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if self._unsynced:
            self._sync(set())
        if not job_ids or time.monotonic() < self._down_until:
            return set()
        try:
            found = for_each(self.client, [self._cancel_key(j) for j in job_ids], lambda p, k: p.exists(k))
        except RedisError as exc:
            self._down_until = time.monotonic() + BACKOFF_S
            self._degraded("looking for cancels", exc)
            return set()
        return {j for j, n in zip(job_ids, found, strict=True) if n}

    # ------------------------------------------------------------ reads (every daemon's jobs)
    def _decode(self, raw: dict[Any, Any]) -> dict[str, Any] | None:
        if not raw or "id" not in raw:
            return None
        row = {str(k): json.loads(v) for k, v in raw.items()}
        for c in COLUMNS:
            row.setdefault(c, None)
        row["meta"] = row["meta"] or {}
        row["params"] = row["params"] or {}
        return row

    def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client.hgetall(self._row_key(job_id))
        except RedisError as exc:
            row = self.local.get(job_id)
            if row is None:
                raise self._unavailable(
                    f"read job {job_id}", exc, "it may run on another daemon: ask again once Redis is back; " + HINT
                ) from exc
            self._degraded("reading a job", exc)
            return {**row, **self.me.stamp()}
        row = self._decode(raw)
        if row is None:  # not (or no longer) in Redis: this daemon's own copy, if it has one
            local = self.local.get(job_id)
            return None if local is None else {**local, **self.me.stamp()}
        return row

    def page(
        self, user: str | None, kind: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[dict[str, Any]]:
        try:
            return self._page(user, kind, limit, before)
        except RedisError as exc:
            self._degraded("listing jobs", exc)
            return [{**r, **self.me.stamp()} for r in self.local.page(user, kind, limit, before)]

    def _page(
        self, user: str | None, kind: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[dict[str, Any]]:
        index = self._index(user)
        top: float | str = "+inf" if before is None else before[0]
        out: list[dict[str, Any]] = []
        offset = 0
        while len(out) < limit and offset < MAX_SCAN:
            got: list[Any] = self.client.zrevrangebyscore(
                index, top, "-inf", start=offset, num=SCAN_BATCH, withscores=True
            )
            ids = [(str(pair[0]), float(pair[1])) for pair in got]
            if not ids:
                break
            offset += len(ids)
            raws = for_each(self.client, [self._row_key(member) for member, _ in ids], lambda p, k: p.hgetall(k))
            gone = []
            for (job_id, score), raw in zip(ids, raws, strict=True):
                if before is not None and score == before[0] and job_id >= before[1]:
                    continue  # same creation time as the cursor: ids order them (newest first = larger id first)
                row = self._decode(raw)
                if row is None:
                    gone.append(job_id)
                elif kind is None or row["kind"] == kind:
                    out.append(row)
            if gone:  # expired or removed: the index forgets them
                self.client.zrem(index, *gone)
        out.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return out[:limit]

    def finished_before(self, when: float, limit: int) -> list[str]:
        return self.local.finished_before(when, limit)  # own jobs (their files are here); Redis expires its rows

    def has(self, job_id: str) -> bool:
        return self.local.has(job_id)
