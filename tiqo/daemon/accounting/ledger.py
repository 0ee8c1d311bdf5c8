"""The request ledger, the audit trail of off-machine calls, budget counters and reservations, alerts.

Everything lives in the daemon's SQLite database (WAL; committed transactions survive ``kill -9``). Money is integer
nano-dollars so sums never drift. A budget reservation *is* a ``calls`` row in state ``pending``: the check, the
counter update and the row are one ``BEGIN IMMEDIATE`` transaction, so under any concurrency (and across processes
sharing the file) spend + reservations never pass a limit. Settling moves the reservation to spent in one
transaction too; on start-up, pending rows left by a crash are settled at their reserved worst case (the provider
may have billed the call) — spend is over-counted, never under-counted.

With ``state.backend = redis`` the counters move to Redis (daemons sharing budgets) and this file keeps the rows;
each row is also added to per-day usage sums in Redis (``UsageSums``), which ``cluster_usage`` reads for every daemon.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo

from tiqo.core.errors import BadRequest
from tiqo.daemon.state.store import Store
from tiqo.policy.budget import NANO, Charge, Refusal, Usage, check

CounterKey = tuple[str, str]  # (counter, period id)

GROUPS = ("day", "provider", "model", "user", "key", "backend", "outcome")
CLUSTER_GROUPS = ("day", "provider", "model", "user")  # what the shared sums can be grouped by
NOT_EXTERNAL = ("local", "cache", "")
CLUSTER_KEEP_DAYS = 400  # the shared sums' expiry (state/redis_usage.py KEEP_DAYS): older days are gone


@dataclass
class RequestRow:
    """One row per request the daemon answered or refused."""

    id: str
    ts: float
    user: str = ""
    tier: str = ""
    task: str = ""
    data_class: str = ""
    backend: str = ""
    provider: str = ""
    model: str = ""
    key: str | None = None  # the key's name, never the secret
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nusd: int = 0
    latency_ms: float = 0.0
    cache: str = "off"
    outcome: str = "ok"  # ok | error | refused | interrupted | cancelled
    error: str | None = None  # the error code
    attempts: int = 0
    route: str = ""
    content: str | None = None  # only with ledger.store_content, never for restricted requests
    audio_s: float = 0.0  # seconds of audio heard (stt) or spoken (tts); for tts, tokens_in counts characters
    images: int = 0  # images made (image), or frames (video)
    video_s: float = 0.0  # seconds of video made
    steps: int = 0  # denoising steps run (local image and video models)
    device: str = ""  # where a local model ran: cpu, cuda:0, ...


REQUEST_COLUMNS = tuple(f.name for f in fields(RequestRow))


@dataclass
class CallRow:
    """One off-machine call: the audit trail (why it was allowed) and its budget reservation."""

    id: str
    request_id: str
    ts: float
    user: str
    provider: str
    model: str
    key: str | None
    data_class: str
    reason: str
    reserved_nusd: int = 0
    charges: list[CounterKey] = field(default_factory=list)


class Counters(Protocol):
    """Budget counters: SQLite (the default) or Redis (several daemons). ``reserve`` is one atomic step."""

    def usage(self, keys: Sequence[CounterKey]) -> dict[CounterKey, Usage]: ...

    def reserve(self, call_id: str, charges: Sequence[Charge], amount: int) -> Refusal | None: ...

    def settle(
        self, call_id: str, keys: Sequence[CounterKey], reserved: int, cost: int
    ) -> dict[CounterKey, tuple[int, int]]:
        """Move ``reserved`` out and add ``cost``; returns spent before and after for each counter."""
        ...

    def periods(self, prefix: str) -> list[tuple[str, str, int, int]]:
        """Counters whose name starts with ``prefix`` (``user:`` …): (counter, period, spent, reserved)."""
        ...


class UsageSums(Protocol):
    """Per-day usage sums every daemon adds to (Redis); ``add`` must not raise (it keeps what it cannot send)."""

    def add(self, day: str, group: tuple[str, str, str, str], amounts: Mapping[str, int]) -> None: ...

    def read(self, days: Iterable[str], user: str | None) -> dict[tuple[str, str, str, str, str], dict[str, int]]: ...


class SqliteCounters:
    """Counters in the ledger's own database. ``reserve`` and ``settle`` run inside the caller's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def usage(self, keys: Sequence[CounterKey]) -> dict[CounterKey, Usage]:
        out: dict[CounterKey, Usage] = {}
        for counter, period in keys:
            row = self.db.execute(
                "SELECT spent, reserved FROM budget_usage WHERE counter = ? AND period = ?", (counter, period)
            ).fetchone()
            out[(counter, period)] = Usage(*row) if row else Usage()
        return out

    def reserve(self, call_id: str, charges: Sequence[Charge], amount: int) -> Refusal | None:
        refusal = check(charges, self.usage([c.key for c in charges]), amount)
        if refusal is None:
            for charge in charges:
                self.db.execute(
                    "INSERT INTO budget_usage (counter, period, spent, reserved) VALUES (?, ?, 0, ?) "
                    "ON CONFLICT (counter, period) DO UPDATE SET reserved = reserved + excluded.reserved",
                    (*charge.key, amount),
                )
        return refusal

    def settle(
        self, call_id: str, keys: Sequence[CounterKey], reserved: int, cost: int
    ) -> dict[CounterKey, tuple[int, int]]:
        out = {}
        for key in keys:
            before = self.usage([key])[key].spent
            self.db.execute(
                "INSERT INTO budget_usage (counter, period, spent, reserved) VALUES (?, ?, ?, 0) "
                "ON CONFLICT (counter, period) DO UPDATE SET spent = spent + ?, reserved = MAX(0, reserved - ?)",
                (*key, cost, cost, reserved),
            )
            out[key] = (before, before + cost)
        return out

    def periods(self, prefix: str) -> list[tuple[str, str, int, int]]:
        return self.db.execute(
            "SELECT counter, period, spent, reserved FROM budget_usage WHERE counter LIKE ?", (prefix + "%",)
        ).fetchall()


class Ledger:
    def __init__(
        self, store: Store, counters: Counters | None = None, timezone: str = "UTC", sums: UsageSums | None = None
    ) -> None:
        self.store = store
        self.sums = sums
        self.db = store.db
        self.local_counters = counters is None
        self.counters: Counters = counters or SqliteCounters(self.db)
        self.zone = ZoneInfo(timezone)
        self.db.create_function("tz_day", 1, self._day, deterministic=True)

    def _day(self, ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, self.zone).strftime("%Y-%m-%d")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ requests
    def record(self, row: RequestRow) -> None:
        names = REQUEST_COLUMNS  # every field is a flat value: asdict's deep copy cost more than the insert
        self.db.execute(
            f"INSERT OR REPLACE INTO requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            tuple(getattr(row, name) for name in names),
        )
        self._add_sums(row)

    def _add_sums(self, row: RequestRow) -> None:
        if self.sums is not None:
            self.sums.add(
                self._day(row.ts),
                (row.user, row.task, row.provider, row.model),
                {
                    "requests": 1,
                    "tokens_in": row.tokens_in,
                    "tokens_out": row.tokens_out,
                    "cost_nusd": row.cost_nusd,
                    "cache_hits": int(row.cache in ("hit", "semantic")),
                    "errors": int(row.outcome != "ok"),
                    "latency_ms": round(row.latency_ms),
                    "audio_ms": round(row.audio_s * 1000),
                    "images": row.images,
                    "video_ms": round(row.video_s * 1000),
                },
            )

    def count_request(self, user: str, day: str, limit: int | None) -> int | None:
        """Count a request of ``user`` on ``day``; None (not counted) when ``limit`` is reached."""
        with self._tx():
            row = self.db.execute("SELECT n FROM request_counts WHERE user = ? AND day = ?", (user, day)).fetchone()
            n = row[0] if row else 0
            if limit is not None and n >= limit:
                return None
            self.db.execute(
                "INSERT INTO request_counts (user, day, n) VALUES (?, ?, 1) "
                "ON CONFLICT (user, day) DO UPDATE SET n = n + 1",
                (user, day),
            )
        return n + 1

    # ------------------------------------------------------------ calls and reservations
    def reserve(self, call: CallRow, charges: Sequence[Charge], amount: int) -> Refusal | None:
        """Atomically check every limit and reserve ``amount`` against each; the call row records it."""
        tightest: dict[CounterKey, Charge] = {}  # users.ann and users."*" both charge user:ann: once, at the lower
        for c in charges:
            if c.key not in tightest or c.limit.usd < tightest[c.key].limit.usd:
                tightest[c.key] = c
        charges = list(tightest.values())
        call.reserved_nusd, call.charges = amount, [c.key for c in charges]
        if self.local_counters:
            with self._tx():
                refusal = self.counters.reserve(call.id, charges, amount)
                if refusal is None:
                    self._insert_call(call)
            return refusal
        self._insert_call(call, status="reserving")  # a crash from here on is reconciled from this row
        try:
            refusal = self.counters.reserve(call.id, charges, amount)
        except Exception:
            with contextlib.suppress(Exception):  # release it in case the server reserved and the reply was lost
                self.counters.settle(call.id, call.charges, amount, 0)
                self.db.execute("DELETE FROM calls WHERE id = ?", (call.id,))
            raise
        if refusal is not None:
            self.db.execute("DELETE FROM calls WHERE id = ?", (call.id,))
            return refusal
        self.db.execute("UPDATE calls SET status = 'pending' WHERE id = ?", (call.id,))
        return None

    def _insert_call(self, call: CallRow, status: str = "pending") -> None:
        self.db.execute(
            "INSERT INTO calls (id, request_id, ts, user, provider, model, key, class, reason, reserved_nusd, "
            "charges, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.id,
                call.request_id,
                call.ts,
                call.user,
                call.provider,
                call.model,
                call.key,
                call.data_class,
                call.reason,
                call.reserved_nusd,
                json.dumps(call.charges),
                status,
            ),
        )

    def settle(
        self,
        call_id: str,
        *,
        status: str,
        cost: int = 0,
        tokens_in: int = 0,
        tokens_out: int = 0,
        error: str | None = None,
        now: float | None = None,
    ) -> dict[CounterKey, tuple[int, int]]:
        """End a call: release its reservation and charge ``cost``. Idempotent (a settled call stays settled).

        The counters move inside the row's transaction: if a shared counter server fails, the row stays pending
        and start-up settles it (its settle is idempotent, so a commit that fails after it does no harm)."""
        with self._tx():
            row = self.db.execute(
                "SELECT reserved_nusd, charges FROM calls WHERE id = ? AND status IN ('pending', 'reserving')",
                (call_id,),
            ).fetchone()
            if row is None:
                return {}
            reserved, charges = row[0], [tuple(k) for k in json.loads(row[1])]
            moved = self.counters.settle(call_id, charges, reserved, cost)
            if charges and not moved and not self.local_counters:
                cost = 0  # the shared server never held this reservation (a crash before it): nothing was charged
            self.db.execute(
                "UPDATE calls SET status = ?, cost_nusd = ?, tokens_in = ?, tokens_out = ?, error = ?, ended = ? "
                "WHERE id = ?",
                (status, cost, tokens_in, tokens_out, error, time.time() if now is None else now, call_id),
            )
            return moved

    def reconcile(self) -> int:
        """Settle calls a crash left pending at their reserved worst case. Returns how many."""
        rows = self.db.execute(
            "SELECT id, reserved_nusd FROM calls WHERE status IN ('pending', 'reserving')"
        ).fetchall()
        for call_id, reserved in rows:
            self.settle(call_id, status="interrupted", cost=reserved, error="daemon_stopped")
        if rows:  # the requests those calls belonged to: one ledger row each, at the cost charged
            marks = ", ".join("?" * len(rows))
            of_calls = f"SELECT request_id FROM calls WHERE id IN ({marks})"
            call_ids = [r[0] for r in rows]
            had = {r[0] for r in self.db.execute(f"SELECT id FROM requests WHERE id IN ({of_calls})", call_ids)}
            self.db.execute(
                "INSERT OR IGNORE INTO requests (id, ts, user, data_class, backend, provider, model, key, "
                "tokens_in, tokens_out, cost_nusd, outcome, error, attempts) "
                "SELECT request_id, ts, user, class, provider, provider, model, key, 0, 0, SUM(cost_nusd), "
                "'interrupted', 'daemon_stopped', COUNT(*) FROM calls WHERE request_id IN "
                f"(SELECT request_id FROM calls WHERE id IN ({', '.join('?' * len(rows))})) GROUP BY request_id",
                [r[0] for r in rows],
            )
            if self.sums is not None:  # the cluster's sums count them too (each once: only rows added here)
                added = self.db.execute(
                    f"SELECT id, ts, user, provider, model, cost_nusd FROM requests WHERE id IN ({of_calls})",
                    call_ids,
                ).fetchall()
                for rid, ts, user, provider, model, cost in added:
                    if rid not in had:
                        self._add_sums(
                            RequestRow(rid, ts, user, provider=provider, model=model, cost_nusd=cost, outcome="error")
                        )
        return len(rows)

    def reserved_total(self) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(reserved_nusd), 0) FROM calls WHERE status = 'pending'").fetchone()
        return int(row[0])

    def usage_of(self, keys: Sequence[CounterKey]) -> dict[CounterKey, Usage]:
        return self.counters.usage(keys)

    def periods(self, prefix: str) -> list[tuple[str, str, int, int]]:
        """Counters of every subject of a ``*`` limit (``user:`` …): (counter, period, spent, reserved)."""
        return self.counters.periods(prefix)

    # ------------------------------------------------------------ alerts
    def alert_once(self, dedupe: str, kind: str, level: str, message: str, data: Mapping[str, Any]) -> int | None:
        """Record an alert unless one with the same ``dedupe`` key exists; its id, or None."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO alerts (ts, kind, dedupe, level, message, data) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), kind, dedupe, level, message, json.dumps(data)),
        )
        return cur.lastrowid if cur.rowcount else None

    def alerts(self, n: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, ts, kind, level, message, data FROM alerts ORDER BY id DESC LIMIT ?", (n,)
        ).fetchall()
        return [
            {"id": i, "ts": ts, "kind": k, "level": lv, "message": m, "data": json.loads(d)}
            for i, ts, k, lv, m, d in rows
        ]

    # ------------------------------------------------------------ queries
    def usage(self, since: float, by: str, user: str | None = None) -> dict[str, Any]:
        if by not in GROUPS:
            raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPS)}")
        group = {"day": "tz_day(ts)", "key": "COALESCE(provider || '/' || key, provider)"}.get(by, by)
        where, args = "ts >= ?", [cast(Any, since)]
        if user is not None:
            where += " AND user = ?"
            args.append(user)
        select = (
            "COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_nusd), 0), "
            "COALESCE(SUM(cache IN ('hit', 'semantic')), 0), COALESCE(SUM(outcome != 'ok'), 0), "
            "COALESCE(SUM(provider NOT IN ('local', 'cache', '')), 0), COALESCE(AVG(latency_ms), 0)"
        )
        rows = self.db.execute(
            f"SELECT {group}, {select} FROM requests WHERE {where} GROUP BY 1 ORDER BY 1", args
        ).fetchall()
        total = self.db.execute(f"SELECT 'total', {select} FROM requests WHERE {where}", args).fetchone()
        rows_out = [_usage_row(r) for r in rows]
        return {"since": since, "by": by, "rows": rows_out, "total": _usage_row(total), "scope": "local"}

    def cluster_usage(self, since: float, by: str, user: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Like ``usage``, from the sums every daemon on the shared Redis adds to: whole calendar days (``since``
        rounds down to its day's start), grouped by day, provider, model or user."""
        if self.sums is None:
            raise BadRequest("this daemon keeps no cluster-wide sums (state.backend is not redis)", hint="add --local")
        if by not in CLUSTER_GROUPS:
            raise BadRequest(
                f"cluster-wide usage is kept per day, user, provider and model, not per {by}",
                param="by",
                hint=f"use --by {'|'.join(CLUSTER_GROUPS)}, or add --local for this daemon's own rows by {by}",
            )
        now = time.time() if now is None else now
        first = dt.datetime.fromtimestamp(max(since, now - CLUSTER_KEEP_DAYS * 86400), self.zone).date()
        last = dt.datetime.fromtimestamp(now, self.zone).date()
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        start = dt.datetime.combine(first, dt.time(), self.zone).timestamp()
        groups: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for (day, who, task, provider, model), sums in self.sums.read(days, user).items():
            name = {"day": day, "user": who, "task": task, "provider": provider, "model": model}[by]
            sums = {**sums, "external": sums.get("requests", 0) if provider not in NOT_EXTERNAL else 0}
            for target in (groups.setdefault(name, {}), total):
                for metric, value in sums.items():
                    target[metric] = target.get(metric, 0) + value
        rows = [_sums_row(name, groups[name]) for name in sorted(groups)]
        return {"since": start, "by": by, "rows": rows, "total": _sums_row("total", total), "scope": "cluster"}

    def logs(self, n: int = 20, user: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE user = ?", [user]) if user is not None else ("", [])
        cur = self.db.execute(f"SELECT * FROM requests {where} ORDER BY ts DESC LIMIT ?", [*args, n])
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["cost_usd"] = item.pop("cost_nusd") / NANO
            out.append(item)
        return out

    def audit(self, n: int = 20, since: float = 0.0) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT id, request_id, ts, user, provider, model, key, class, reason, status, reserved_nusd, cost_nusd, "
            "tokens_in, tokens_out, error FROM calls WHERE ts >= ? ORDER BY ts DESC LIMIT ?",
            (since, n),
        )
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["reserved_usd"] = item.pop("reserved_nusd") / NANO
            item["cost_usd"] = item.pop("cost_nusd") / NANO
            out.append(item)
        return out


def _usage_row(r: Sequence[Any]) -> dict[str, Any]:
    group, n, t_in, t_out, cost, hits, errors, external, latency = r
    return {
        "group": group,
        "requests": n,
        "tokens_in": t_in,
        "tokens_out": t_out,
        "cost_usd": cost / NANO,
        "cache_hits": hits,
        "errors": errors,
        "external": external,
        "avg_latency_ms": round(latency, 1),
    }


def _sums_row(group: str, s: Mapping[str, int]) -> dict[str, Any]:
    n = s.get("requests", 0)
    return {
        "group": group,
        "requests": n,
        "tokens_in": s.get("tokens_in", 0),
        "tokens_out": s.get("tokens_out", 0),
        "cost_usd": s.get("cost_nusd", 0) / NANO,
        "cache_hits": s.get("cache_hits", 0),
        "errors": s.get("errors", 0),
        "external": s.get("external", 0),
        "avg_latency_ms": round(s.get("latency_ms", 0) / n, 1) if n else 0.0,
        "audio_s": s.get("audio_ms", 0) / 1000,
        "images": s.get("images", 0),
        "video_s": s.get("video_ms", 0) / 1000,
    }
