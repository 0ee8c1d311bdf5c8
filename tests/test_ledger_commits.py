"""What one request writes to the ledger, and when: a call reserved against no counter is one statement at each end,
and its end joins the request row's commit (a commit is most of a small write's cost); real SQLite files, read from
a second connection that sees committed rows only."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tiqo.daemon.accounting.ledger import CallRow, Ledger, RequestRow
from tiqo.daemon.state.store import Store
from tiqo.policy.budget import Charge, Limit


def _call(call_id: str, request_id: str = "req_1") -> CallRow:
    return CallRow(call_id, request_id, 1.0, "ann", "alpha", "alpha-m", None, "internal", "test")


def _status(path: Path, call_id: str) -> str:
    with sqlite3.connect(path) as other:
        return str(other.execute("SELECT status FROM calls WHERE id = ?", (call_id,)).fetchone()[0])


def test_an_uncharged_calls_end_is_committed_with_the_request_row(tmp_path: Path) -> None:
    path = tmp_path / "tiqo.db"
    ledger = Ledger(Store(path))
    assert ledger.reserve(_call("call_1"), [], 0) is None
    assert _status(path, "call_1") == "pending"  # committed before the provider is called (the audit trail)

    async def serve() -> None:
        assert ledger.settle("call_1", status="ok", cost=7, tokens_in=3, tokens_out=4, charged=False) == {}
        assert _status(path, "call_1") == "pending"  # not yet: the request's row takes it along
        ledger.record(RequestRow("req_1", 1.0, "ann", provider="alpha", cost_nusd=7))
        assert _status(path, "call_1") == "ok"

    asyncio.run(serve())
    with sqlite3.connect(path) as other:
        row = other.execute("SELECT cost_nusd, tokens_in, tokens_out, ended FROM calls").fetchone()
        assert row[:3] == (7, 3, 4) and row[3] > 0
        assert other.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)


def test_an_end_no_row_takes_is_written_at_the_end_of_the_loops_turn(tmp_path: Path) -> None:
    path = tmp_path / "tiqo.db"
    ledger = Ledger(Store(path))
    ledger.reserve(_call("call_1"), [], 0)

    async def serve() -> None:
        ledger.settle("call_1", status="failed", error="timeout", charged=False)
        await asyncio.sleep(0)
        assert _status(path, "call_1") == "failed"

    asyncio.run(serve())
    assert ledger.settle("call_1", status="ok", charged=False) == {}  # settled stays settled
    assert _status(path, "call_1") == "failed"


def test_a_charged_call_takes_the_whole_path_whatever_it_is_told(tmp_path: Path) -> None:
    path = tmp_path / "tiqo.db"
    ledger = Ledger(Store(path))
    charge = Charge(Limit("global", "", "day", 1.0), "global", "day:2026-01-01", 2e9)
    assert ledger.reserve(_call("call_1"), [charge], 500) is None
    assert ledger.reserved_total() == 500

    async def serve() -> None:
        ledger.settle("call_1", status="ok", cost=200, charged=False)  # a wrong hint: the row says otherwise
        ledger.record(RequestRow("req_1", 1.0, "ann"))

    asyncio.run(serve())
    assert _status(path, "call_1") == "ok"
    assert ledger.reserved_total() == 0
    assert ledger.usage_of([charge.key])[charge.key].spent == 200
