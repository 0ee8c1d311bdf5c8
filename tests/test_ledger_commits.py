"""What one request writes to the ledger: a call reserved against no counter is one statement at each end (no
transaction around it, nothing read back); real SQLite files, read from a second connection that sees committed rows
only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tiqo.daemon.accounting.ledger import CallRow, Ledger
from tiqo.daemon.state.store import Store
from tiqo.policy.budget import Charge, Limit


def _call(call_id: str, request_id: str = "req_1") -> CallRow:
    return CallRow(call_id, request_id, 1.0, "ann", "alpha", "alpha-m", None, "internal", "test")


def _row(path: Path, call_id: str) -> tuple[str, int, int, int]:
    with sqlite3.connect(path) as other:
        sql = "SELECT status, cost_nusd, tokens_in, tokens_out FROM calls WHERE id = ?"
        status, cost, tokens_in, tokens_out = other.execute(sql, (call_id,)).fetchone()
        return str(status), int(cost), int(tokens_in), int(tokens_out)


def test_an_uncharged_call_is_one_statement_at_each_end(tmp_path: Path) -> None:
    path = tmp_path / "tiqo.db"
    ledger = Ledger(Store(path))
    statements: list[str] = []
    ledger.db.set_trace_callback(statements.append)
    assert ledger.reserve(_call("call_1"), [], 0) is None
    assert _row(path, "call_1")[0] == "pending"  # committed before the provider is called (the audit trail)
    assert ledger.settle("call_1", status="ok", cost=7, tokens_in=3, tokens_out=4, charged=False) == {}
    assert _row(path, "call_1") == ("ok", 7, 3, 4)
    assert [s.split()[0] for s in statements] == ["INSERT", "UPDATE"]
    assert ledger.settle("call_1", status="failed", charged=False) == {}  # settled stays settled
    assert _row(path, "call_1")[0] == "ok"


def test_a_charged_call_takes_the_whole_path_whatever_it_is_told(tmp_path: Path) -> None:
    path = tmp_path / "tiqo.db"
    ledger = Ledger(Store(path))
    charge = Charge(Limit("global", "", "day", 1.0), "global", "day:2026-01-01", 2e9)
    assert ledger.reserve(_call("call_1"), [charge], 500) is None
    assert ledger.reserved_total() == 500
    ledger.settle("call_1", status="ok", cost=200, charged=False)  # a wrong hint: the row says otherwise
    assert _row(path, "call_1")[0] == "ok"
    assert ledger.reserved_total() == 0
    assert ledger.usage_of([charge.key])[charge.key].spent == 200
