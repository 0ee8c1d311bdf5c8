"""Budget counters (SQLite in the ledger's own database, or Redis when daemons share budgets) and the per-day usage
sums daemons on a shared Redis add to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from tiqo.daemon.accounting.records import CounterKey
from tiqo.policy.budget import Charge, Refusal, Usage, check


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
