"""The request ledger, the audit trail of off-machine calls, budget counters and reservations, alerts.

Everything lives in the daemon's SQLite database (WAL; committed transactions survive ``kill -9``). Money is integer
nano-dollars so sums never drift. A budget reservation *is* a ``calls`` row in state ``pending``: the check, the
counter update and the row are one ``BEGIN IMMEDIATE`` transaction, so under any concurrency (and across processes
sharing the file) spend + reservations never pass a limit. Settling moves the reservation to spent in one
transaction too; on start-up, pending rows left by a crash are settled at their reserved worst case (the provider
may have billed the call) — spend is over-counted, never under-counted.

With ``state.backend = redis`` the counters move to Redis (daemons sharing budgets) and this file keeps the rows;
each row is also added to per-day usage sums in Redis (``UsageSums``), which ``cluster_usage`` reads for every daemon.

This module writes; what it answers (usage, the request log, the audit trail) is ``usage.UsageReport``, the rows are
in ``records``, the counters in ``counters``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

from tiqo.daemon.accounting.counters import Counters, SqliteCounters, UsageSums
from tiqo.daemon.accounting.records import REQUEST_COLUMNS, CallRow, CounterKey, RequestRow
from tiqo.daemon.accounting.usage import GROUPS, UsageReport
from tiqo.daemon.state.store import Store
from tiqo.policy.budget import Charge, Refusal, Usage

# What importers of the ledger have always found here; each lives in the module named above.
__all__ = ["GROUPS", "CallRow", "CounterKey", "Counters", "Ledger", "RequestRow", "SqliteCounters", "UsageSums"]


_END_CALL = (
    "UPDATE calls SET status = ?, cost_nusd = ?, tokens_in = ?, tokens_out = ?, error = ?, ended = ? WHERE id = ?"
)
_INSERT_REQUEST = (
    f"INSERT OR REPLACE INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)


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
        self.report = UsageReport(self.db, self.zone, sums)

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
        # every field is a flat value: asdict's deep copy cost more than the insert
        self.db.execute(_INSERT_REQUEST, tuple(getattr(row, name) for name in REQUEST_COLUMNS))
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
            if not charges:  # nothing to check or count: the row alone, one statement (atomic by itself)
                self._insert_call(call)
                return None
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
        charged: bool = True,
    ) -> dict[CounterKey, tuple[int, int]]:
        """End a call: release its reservation and charge ``cost``. Idempotent (a settled call stays settled).

        The counters move inside the row's transaction: if a shared counter server fails, the row stays pending
        and start-up settles it (its settle is idempotent, so a commit that fails after it does no harm).
        ``charged=False`` (the call was reserved against no counter) tries one statement first, which only ends a
        row that really charges nothing; any other row takes the transaction below."""
        ended = time.time() if now is None else now
        if not charged and self.local_counters:
            cur = self.db.execute(
                _END_CALL + " AND status IN ('pending', 'reserving') AND charges = '[]'",
                (status, cost, tokens_in, tokens_out, error, ended, call_id),
            )
            if cur.rowcount:
                return {}
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
            self.db.execute(_END_CALL, (status, cost, tokens_in, tokens_out, error, ended, call_id))
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

    # ------------------------------------------------------------ queries (UsageReport)
    def usage(self, since: float, by: str, user: str | None = None) -> dict[str, Any]:
        return self.report.usage(since, by, user)

    def cluster_usage(self, since: float, by: str, user: str | None = None, now: float | None = None) -> dict[str, Any]:
        return self.report.cluster_usage(since, by, user, now)

    def logs(self, n: int = 20, user: str | None = None) -> list[dict[str, Any]]:
        return self.report.logs(n, user)

    def audit(self, n: int = 20, since: float = 0.0) -> list[dict[str, Any]]:
        return self.report.audit(n, since)
