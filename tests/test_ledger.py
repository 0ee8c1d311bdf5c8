"""The ledger, budgets, rate limits, tiers and data classification, end to end: a real daemon process on a real Unix
socket, its real SQLite file, stub providers speaking the OpenAI wire protocol, and the bundled local model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon, wait_for
from tests.test_gateway import ask, write_home
from tests.upstreams import Upstream

NANO = 1_000_000_000


@pytest.fixture
def homes() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for h in made:
        shutil.rmtree(h, ignore_errors=True)


def daemon_with(homes: list[Path], stubs: tuple[Upstream, Upstream], extra: dict[str, Any]) -> DaemonProc:
    home = short_home()
    homes.append(home)
    write_home(home, *stubs, extra)
    return start_daemon(home)


def chat_requests(up: Upstream) -> list[dict[str, Any]]:
    return [r for r in up.requests if r["path"].endswith("/chat/completions")]


def budget_of(d: DaemonProc) -> dict[str, Any]:
    r = d.client().get("/tiqo/budget")
    assert r.status_code == 200, r.text
    return r.json()


def db_rows(d: DaemonProc, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(d.home / "state" / "tiqo.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


# ------------------------------------------------------------------ budgets under concurrency


def test_200_concurrent_requests_never_spend_past_the_budget(
    homes: list[Path], stubs: tuple[Upstream, Upstream]
) -> None:
    a, _ = stubs
    a.held = True  # every call holds its reservation until the whole burst is answered, however slow the machine
    # worst case per call: (11 bytes + 8) prompt tokens at $1/M + 100 completion tokens at $2/M = $0.000219
    worst = (19 * 1.0 + 100 * 2.0) / 1e6
    limit = round(worst * 20 + worst / 2, 9)  # room for 20 worst cases, not 21
    d = daemon_with(homes, stubs, {"budgets": {"global": {"daily": limit}}})
    try:
        client = d.client(120)

        def one(i: int) -> httpx.Response:
            body = {"model": "alpha-m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100}
            return client.post("/v1/chat/completions", json=body, headers={"x-tiqo-user": f"u{i % 7}"})

        with ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(one, i) for i in range(200)]
            deadline = time.monotonic() + 90
            # held calls cannot finish: wait until every other request is answered (or more than 20 got through)
            while sum(f.done() for f in futures) < 180 and len(chat_requests(a)) <= 20:
                assert time.monotonic() < deadline, (sum(f.done() for f in futures), len(chat_requests(a)))
                time.sleep(0.05)
            a.held = False
            answers = [f.result() for f in futures]
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code != 200]
        assert len(ok) == 20, [r.text for r in refused[:3]]
        assert {r.status_code for r in refused} == {429}
        err = refused[0].json()["error"]
        assert err["code"] == "budget_exceeded" and "global daily" in err["message"] and "resets at" in err["message"]
        assert int(refused[0].headers["retry-after"]) >= 1
        assert len(chat_requests(a)) == 20  # refused requests never reached the provider

        budget = budget_of(d)
        (row,) = [r for r in budget["limits"] if r["scope"] == "global"]
        assert row["reserved_usd"] == 0 and budget["reserved_usd"] == 0
        assert row["spent_usd"] <= limit
        # what the stub billed: 2 prompt words and 3 completion pieces per answer, at the model's prices
        billed = sum((2 * 1.0 + r.json()["usage"]["completion_tokens"] * 2.0) / 1e6 for r in ok)
        assert row["spent_usd"] == pytest.approx(billed, abs=1e-9)
        usage = client.get("/tiqo/usage", params={"since": "1h", "by": "outcome"}).json()
        by = {g["group"]: g for g in usage["rows"]}
        assert by["ok"]["requests"] == 20 and by["refused"]["requests"] == 180
        assert usage["total"]["cost_usd"] == pytest.approx(billed, abs=1e-9)
        assert usage["total"]["tokens_in"] == 40 and usage["total"]["tokens_out"] == 60
        # the audit trail holds exactly the calls the provider saw, matched by X-Client-Request-Id
        seen = sorted(r["headers"]["x-client-request-id"] for r in chat_requests(a))
        calls = client.get("/tiqo/audit", params={"n": 500}).json()["data"]
        assert sorted(c["id"] for c in calls) == seen
        assert all(c["status"] == "ok" and "allowed to alpha" in c["reason"] for c in calls)
    finally:
        a.held = False
        d.stop()


def test_kill_9_mid_burst_leaves_a_consistent_ledger(homes: list[Path], stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    a.delay_s = 1.5
    d = daemon_with(homes, stubs, {"budgets": {"global": {"daily": 5.0}, "providers": {"alpha": {"monthly": 5.0}}}})
    home = d.home
    try:
        client = d.client(30)

        def one(i: int) -> int:
            body = {"model": "alpha-m", "messages": [{"role": "user", "content": f"burst {i}"}], "max_tokens": 50}
            try:
                return client.post("/v1/chat/completions", json=body).status_code
            except httpx.HTTPError:
                return 0

        with ThreadPoolExecutor(32) as pool:
            first = list(pool.map(one, range(8)))  # answered before the crash
            assert first == [200] * 8
            futures = [pool.submit(one, i) for i in range(8, 40)]
            assert wait_for(lambda: len(chat_requests(a)) >= 20, timeout=30)
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
            [f.result() for f in futures]
    finally:
        a.delay_s = 0.0
    assert db_rows(d, "SELECT COUNT(*) FROM calls WHERE status = 'pending'")[0][0] > 0  # the crash left some

    d2 = start_daemon(home)
    try:
        assert db_rows(d2, "PRAGMA integrity_check") == [("ok",)]
        assert db_rows(d2, "SELECT COUNT(*) FROM calls WHERE status IN ('pending', 'reserving')") == [(0,)]
        assert budget_of(d2)["reserved_usd"] == 0
        for row in budget_of(d2)["limits"]:
            assert row["reserved_usd"] == 0
        # exactly one audit row for every call the provider received (matched by X-Client-Request-Id); rows for calls
        # the crash stopped before they were sent are settled as interrupted
        seen = [r["headers"]["x-client-request-id"] for r in chat_requests(a)]
        calls = dict(db_rows(d2, "SELECT id, status FROM calls"))
        assert len(seen) == len(set(seen)) and set(seen) <= set(calls)
        assert all(calls[c] == "interrupted" for c in set(calls) - set(seen))
        assert set(calls.values()) == {"ok", "interrupted"}
        answered = [r["headers"]["x-client-request-id"] for r in chat_requests(a)[:8]]
        assert all(calls[c] == "ok" for c in answered)
        # every call is in one request row, and the counters equal the ledger
        per_request = db_rows(d2, "SELECT request_id, COUNT(*) FROM calls GROUP BY request_id")
        assert all(n == 1 for _, n in per_request)
        request_ids = {r for (r,) in db_rows(d2, "SELECT id FROM requests WHERE provider = 'alpha'")}
        assert request_ids == {r for r, _ in per_request}
        spent = db_rows(d2, "SELECT spent, reserved FROM budget_usage WHERE counter = 'global'")
        ledger_cost = db_rows(d2, "SELECT SUM(cost_nusd) FROM calls")[0][0]
        assert spent == [(ledger_cost, 0)]
        interrupted = db_rows(d2, "SELECT cost_nusd, reserved_nusd FROM calls WHERE status = 'interrupted'")
        assert interrupted and all(cost == reserved for cost, reserved in interrupted)  # charged at worst case
        assert "settled" in d2.log_text() and "left in flight" in d2.log_text()
        r = ask(d2, "alpha-m", "after the crash", max_tokens=5)  # and it keeps serving
        assert r.status_code == 200, r.text
    finally:
        d2.stop()


# ------------------------------------------------------------------ thresholds, actions and alerts


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_thresholds_alert_once_and_prefer_local_moves_traffic_local(
    homes: list[Path], stubs: tuple[Upstream, Upstream]
) -> None:
    a, _ = stubs
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    out = short_home()  # the alert command writes one file per alert
    # $1 per completion token: each answer (3 tokens) costs $3, its worst case (4 tokens) $4; the day allows $10
    extra = {
        "models": {"pricey": {"provider": "alpha", "upstream_model": "p", "price_in": 0.0, "price_out": 1e6}},
        "aliases": {"ext": ["pricey"]},
        "budgets": {"global": {"daily": 10.0}},
        "budget": {
            "actions": "85:prefer-local",
            "alert_command": f"cat > {out}/alert-$$.json",
            "alert_webhook": f"http://127.0.0.1:{hook.server_port}/hook",
        },
    }
    d = daemon_with(homes, stubs, extra)
    try:
        client = d.client(120)
        events: list[dict[str, Any]] = []

        def listen() -> None:
            with client.stream("GET", "/tiqo/events", params={"kinds": "alert"}, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) >= 2:
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.3)
        for i in range(3):
            r = ask(d, "auto", f"hi {i}", max_tokens=4)  # "echo: hi N": 3 tokens
            assert r.headers["x-tiqo-backend"] == "alpha", r.text
        budget = budget_of(d)
        (row,) = budget["limits"]
        assert row["spent_usd"] == pytest.approx(9.0) and row["thresholds_passed"] == [70, 85]
        # at 90 % (≥ 85 %: prefer-local) the local model answers the same route
        r = ask(d, "auto", "hello there again", max_tokens=4)
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:llama.cpp"
        assert "prefer-local" in r.headers["x-tiqo-route"]
        assert len(chat_requests(a)) == 3
        explain = client.post("/tiqo/route/explain", json={"prompt": "hello"}).json()
        assert explain["chosen"] == "smollm2-135m"
        assert "moved after local models" in next(c for c in explain["candidates"] if c["model"] == "pricey")["reason"]
        # naming the external model still works while the budget has room for its worst case … then it does not
        r = ask(d, "pricey", "hi", max_tokens=4)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "global daily budget" in r.json()["error"]["message"]
        # alerts: 70 % and 85 %, each once, in the ledger, the event stream, the command and the webhook
        alerts = client.get("/tiqo/alerts").json()["data"]
        assert sorted(x["data"]["threshold"] for x in alerts) == [70, 85]
        listener.join(10)
        assert sorted(e["data"]["data"]["threshold"] for e in events) == [70, 85]
        assert wait_for(lambda: len(list(out.glob("alert-*.json"))) >= 2, timeout=10)
        lines = [json.loads(f.read_text()) for f in out.glob("alert-*.json")]
        assert sorted(x["data"]["threshold"] for x in lines) == [70, 85]
        assert wait_for(lambda: len(_Hook.received) >= 2, timeout=10)
        assert sorted(x["data"]["threshold"] for x in _Hook.received) == [70, 85]
        ask(d, "auto", "one more", max_tokens=4)
        assert len(client.get("/tiqo/alerts").json()["data"]) == 2  # once per period
    finally:
        hook.shutdown()
        d.stop()
        shutil.rmtree(out, ignore_errors=True)


def test_block_external_and_local_keeps_working(homes: list[Path], stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    d = daemon_with(homes, stubs, {"budgets": {"users": {"ann": {"daily": 0.0}}}})
    try:
        r = ask(d, "alpha-m", "hi", headers={"x-tiqo-user": "ann"}, max_tokens=4)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "user ann daily" in r.json()["error"]["message"]
        r = ask(d, "auto", "hi", headers={"x-tiqo-user": "ann"}, max_tokens=4)
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:llama.cpp"
        r = ask(d, "alpha-m", "hi", headers={"x-tiqo-user": "bob"}, max_tokens=4)
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "alpha"
        assert len(chat_requests(a)) == 1
        # text completions (a named local model, no routing) are in the ledger too, streamed or not
        for stream in (False, True):
            body = {"model": "smollm2-135m", "prompt": "Once upon", "max_tokens": 3, "stream": stream}
            r = d.client().post("/v1/completions", json=body, headers={"x-tiqo-user": "ann"})
            assert r.status_code == 200, r.text
        rows = d.client().get("/tiqo/logs", params={"n": 2, "user": "ann"}).json()["data"]
        assert [(x["task"], x["outcome"], x["backend"]) for x in rows] == [("completion", "ok", "local:llama.cpp")] * 2
        assert all(x["tokens_out"] == 3 and x["tokens_in"] > 0 for x in rows)
    finally:
        d.stop()


# ------------------------------------------------------------------ classification


def test_restricted_prompts_never_reach_a_provider(homes: list[Path], stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    extra = {"users": {"carol": {"data_class": "restricted"}}, "ledger": {"store_content": True}}
    d = daemon_with(homes, stubs, extra)
    try:
        secret_prompts = [
            ("my card is 4111 1111 1111 1111, summarise", {}),
            ("deploy with AKIAABCDEFGHIJKLMNOP please", {"x-tiqo-class": "public"}),  # saying public does not help
            ("write to bob@example.com", {}),
            ("a harmless prompt", {"x-tiqo-class": "restricted"}),
            ("a harmless prompt", {"x-tiqo-user": "carol"}),  # the user's default class
        ]
        for text, headers in secret_prompts:
            for body in ({"max_tokens": 4}, {"max_tokens": 4, "stream": True}, {"max_tokens": 4, "temperature": 0}):
                r = ask(d, "auto", text, headers=headers, **body)
                assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:llama.cpp", (text, r.text)
            r = ask(d, "alpha-m", text, headers=headers, max_tokens=4)  # naming an external model: fail closed
            assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data"
        a.fail_next(5, "500")  # even when candidates fail, nothing restricted falls back outside
        r = ask(d, "auto", "my card is 4111 1111 1111 1111", max_tokens=4)
        assert r.headers["x-tiqo-backend"] == "local:llama.cpp"
        r = ask(d, "ext", "my card is 4111 1111 1111 1111", max_tokens=4)  # an alias of external models only
        assert r.status_code == 403 and "never leaves the machine" in r.json()["error"]["message"]
        assert chat_requests(a) == [] and chat_requests(b) == []
        # not one restricted prompt in the ledger's content, and no audit row
        logs = d.client().get("/tiqo/logs", params={"n": 100}).json()["data"]
        assert logs and all(row["data_class"] == "restricted" and row["content"] is None for row in logs)
        assert d.client().get("/tiqo/audit").json()["data"] == []
        dump = (d.home / "state" / "tiqo.db").read_bytes() + (d.home / "logs" / "daemon.log").read_bytes()
        for text in ("4111 1111", "AKIAABCDEFGHIJKLMNOP", "bob@example.com"):
            assert text.encode() not in dump
        # an internal request keeps its content (ledger.store_content = true)
        a.reset()
        r = ask(d, "alpha-m", "an ordinary question", max_tokens=4)
        assert r.status_code == 200
        row = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
        assert row["data_class"] == "internal" and "an ordinary question" in row["content"]
    finally:
        d.stop()


# ------------------------------------------------------------------ users, tiers and rate limits


def test_tiers_and_rate_limits(homes: list[Path], stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    extra = {
        "models": {
            "fancy": {"provider": "alpha", "upstream_model": "f", "price_in": 5, "price_out": 15, "premium": True}
        },
        "tiers": {
            "tight": {"rpm": 2, "description": "two a minute"},
            "basic": {"premium": False},
            "free": {"providers": ["local"]},
            "pro": {"description": "everything"},  # [tiers] in config.toml replaces the default tiers whole
        },
        "users": {"ann": {"rpd": 1}, "bob": {"tier": "free"}, "dan": {"tier": "tight", "rpm": 3}},
    }
    d = daemon_with(homes, stubs, extra)
    try:
        for _ in range(2):
            assert ask(d, "alpha-m", "hi", headers={"x-tiqo-tier": "tight"}, max_tokens=4).status_code == 200
        r = ask(d, "alpha-m", "hi", headers={"x-tiqo-tier": "tight"}, max_tokens=4)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert "2 requests per minute" in r.json()["error"]["message"] and 1 <= int(r.headers["retry-after"]) <= 30
        # a user's own limit overrides the tier's: dan gets 3
        codes = [ask(d, "alpha-m", "hi", headers={"x-tiqo-user": "dan"}, max_tokens=4).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        # requests per day
        assert ask(d, "alpha-m", "hi", headers={"x-tiqo-user": "ann"}, max_tokens=4).status_code == 200
        r = ask(d, "alpha-m", "hi", headers={"x-tiqo-user": "ann"}, max_tokens=4)
        assert r.status_code == 429 and "1 requests per day" in r.json()["error"]["message"]
        # a user's default tier: bob is free, local only
        before = len(chat_requests(a))
        r = ask(d, "auto", "hi", headers={"x-tiqo-user": "bob"}, max_tokens=4)
        assert r.headers["x-tiqo-backend"] == "local:llama.cpp" and len(chat_requests(a)) == before
        # premium models: basic may not, pro may
        r = ask(d, "fancy", "hi", headers={"x-tiqo-tier": "basic"}, max_tokens=4)
        assert r.status_code == 400 and "premium" in r.json()["error"]["message"]
        assert ask(d, "fancy", "hi", headers={"x-tiqo-tier": "pro"}, max_tokens=4).status_code == 200
        r = ask(d, "alpha-m", "hi", headers={"x-tiqo-tier": "gold"})
        assert r.status_code == 400 and "unknown tier" in r.json()["error"]["message"]
        # every request has a ledger row, refused ones too
        rows = d.client().get("/tiqo/logs", params={"n": 100}).json()["data"]
        refused = [r for r in rows if r["outcome"] == "refused"]
        assert {r["error"] for r in refused} == {"rate_limited", "no_candidate", "bad_request"}
        by_user = d.client().get("/tiqo/usage", params={"by": "user"}).json()["rows"]
        assert {g["group"]: g["requests"] for g in by_user}["dan"] == 4
    finally:
        d.stop()
