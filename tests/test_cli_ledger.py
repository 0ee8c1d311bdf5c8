"""The ledger's commands end to end: `tiqo usage|logs|audit|budget|alerts|events` and `tiqo models add --premium`,
as real CLI subprocesses against one real daemon. Local answers come from the bundled model (real llama.cpp);
external calls go to a local stub that speaks OpenAI's wire protocol (tests/upstreams.py), never to a provider."""

from __future__ import annotations

import datetime as dt
import json
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import tomlkit
from typer.testing import CliRunner

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.test_cli_gateway import as_json, narrow, ok
from tests.upstreams import Upstream

MODEL = "smollm2-135m"
EXTERNAL = "stub-m"
PRICE_OUT = 1000.0  # USD per 1M output tokens: 8 tokens cost $0.008
STUB_SECRET = "sk-ledgertest-" + secrets.token_hex(8)


def new_user(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def stub() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def d(stub: Upstream) -> Iterator[DaemonProc]:
    """One daemon: the bundled local model, and provider `stub` (one key) serving the external model stub-m."""
    home = short_home()
    config = {
        "providers": {"stub": {"kind": "openai", "base_url": stub.url + "/v1"}},
        "models": {EXTERNAL: {"provider": "stub", "upstream_model": "up", "price_in": 0.0, "price_out": PRICE_OUT}},
    }
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"stub": {"k1": {"secret": STUB_SECRET}}}))
    keys.chmod(0o600)
    daemon = start_daemon(home, TIQO_NO_AUTOSTART="1")
    yield daemon
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


def ask(d: DaemonProc, user: str, prompt: str, *extra: str) -> dict[str, Any]:
    """One real request through `tiqo ask --json`; its result (text, backend, usage, cost, request id)."""
    result: dict[str, Any] = as_json(d.cli("ask", "--json", "--max-tokens", "8", "--user", user, *extra, prompt))
    return result


def budget_rows(d: DaemonProc) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = as_json(d.cli("budget", "show", "--json"))["limits"]
    return rows


def config_budgets(d: DaemonProc) -> dict[str, Any]:
    path = d.home / "config" / "config.toml"
    budgets: dict[str, Any] = tomllib.loads(path.read_text()).get("budgets", {})
    return budgets


class Tail:
    """`tiqo events ...` running as its own process; its stdout lines arrive on a queue."""

    def __init__(self, d: DaemonProc, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiqo", "events", *args],
            env={**d.env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, match: Callable[[str], bool] = lambda _: True, timeout: float = 60.0) -> str | None:
        """The next line that ``match``es (others are skipped), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if match(line):
                return line
        return None

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


def subscribed(d: DaemonProc, *tails: Tail) -> None:
    """Send tiny local requests (user `sync`) until every tail has printed one: from then on they see everything.
    (The daemon publishes request events only while someone listens, so one sent before would be missed.)"""
    waiting = list(tails)
    for _ in range(5):
        ok(d.cli("ask", "--max-tokens", "1", "--user", "sync", "ping"))
        waiting = [t for t in waiting if t.next(lambda line: "sync" in line, timeout=20) is None]
        if not waiting:
            return
    errors = [t.stop()[1] for t in waiting]
    pytest.fail(f"`tiqo events` never printed an event: {errors}\ndaemon log:\n{d.log_text()[-4000:]}")


def json_of(user: str, kind: str = "request") -> Callable[[str], bool]:
    def match(line: str) -> bool:
        event = json.loads(line)
        return bool(event["kind"] == kind and (kind != "request" or event["data"]["user"] == user))

    return match


# --------------------------------------------------------------------------- usage and logs
def test_usage_and_logs_count_local_requests(d: DaemonProc) -> None:
    user = new_user("counted")
    sampled = [ask(d, user, "Name a colour.") for _ in range(2)]  # sampled: never cached, llama.cpp each time
    seeded = [ask(d, user, "Name a fruit.", "--seed", "7", "-t", "0") for _ in range(2)]  # the 2nd: a cache hit
    assert [r["cache"] for r in seeded] == ["miss", "hit"], seeded
    sent = sampled + seeded
    assert all(r["usage"]["completion_tokens"] <= 8 and r["usage"]["prompt_tokens"] > 0 for r in sent), sent

    by_backend = as_json(d.cli("usage", "--json", "--user", user, "--by", "backend"))
    assert by_backend["by"] == "backend"
    groups = {r["group"]: r for r in by_backend["rows"]}
    assert set(groups) == {"local:llama.cpp", "cache"}, groups
    assert (groups["local:llama.cpp"]["requests"], groups["cache"]["requests"]) == (3, 1)
    total = by_backend["total"]
    assert total["group"] == "total" and total["requests"] == 4
    assert total["tokens_in"] == sum(r["usage"]["prompt_tokens"] for r in sent)
    assert total["tokens_out"] == sum(r["usage"]["completion_tokens"] for r in sent)
    assert (total["cache_hits"], total["errors"], total["external"], total["cost_usd"]) == (1, 0, 0, 0.0)
    assert total["avg_latency_ms"] > 0

    by_day = as_json(d.cli("usage", "--json", "--user", user, "--since", "1h"))
    today = dt.datetime.now(ZoneInfo(by_day["timezone"])).strftime("%Y-%m-%d")
    assert [(r["group"], r["requests"]) for r in by_day["rows"]] == [(today, 4)]
    assert time.time() - 3700 < by_day["since"] < time.time() - 3500
    nobody = as_json(d.cli("usage", "--json", "--user", "nobody-" + secrets.token_hex(3)))
    assert nobody["rows"] == [] and nobody["total"]["requests"] == 0

    table = ok(d.cli("usage", "--user", user, "--by", "model", COLUMNS="80"))
    for word in ("MODEL", "REQS", "TOK IN", "TOK OUT", "COST", "CACHED", "ERRORS", "EXT", "LATENCY", f"user {user}"):
        assert word in table.stdout, table.stdout
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith(MODEL))
    assert row[1:4] == ["4", str(total["tokens_in"]), str(total["tokens_out"])], row
    assert row[4:8] == ["$0", "1", "0", "0"], row
    totals = next(line.split() for line in table.stdout.splitlines() if line.startswith("total"))
    assert totals[1:8] == row[1:8], totals
    narrow(table)
    assert "no requests" in ok(d.cli("usage", "--user", "nobody-" + secrets.token_hex(3))).stdout

    logs = as_json(d.cli("logs", "--json", "--user", user))
    assert [r["id"] for r in logs] == [r["request_id"] for r in reversed(sent)]  # newest first
    assert {(r["user"], r["model"], r["outcome"], r["cost_usd"]) for r in logs} == {(user, MODEL, "ok", 0.0)}
    assert [r["cache"] for r in logs] == ["hit", "miss", "off", "off"]
    assert [r["backend"] for r in logs] == ["cache", "local:llama.cpp", "local:llama.cpp", "local:llama.cpp"]
    for row_, sent_ in zip(logs, reversed(sent), strict=True):
        assert (row_["tokens_in"], row_["tokens_out"]) == (
            sent_["usage"]["prompt_tokens"],
            sent_["usage"]["completion_tokens"],
        )
    assert [r["id"] for r in as_json(d.cli("logs", "--json", "--user", user, "-n", "2"))] == [
        r["request_id"] for r in reversed(seeded)
    ]

    shown = ok(d.cli("logs", "--user", user, COLUMNS="160"))
    lines = [line for line in shown.stdout.splitlines() if user in line]
    assert len(lines) == 4, shown.stdout
    assert "hit" in lines[-1] and "cache" in lines[-1]  # newest last, like a log
    assert all(MODEL in line and " ok" in line for line in lines), shown.stdout
    first = sent[0]["usage"]
    assert f"{first['prompt_tokens']}→{first['completion_tokens']}" in lines[0]
    for word in ("TIME", "USER", "MODEL", "BACKEND", "TOKENS", "COST", "LATENCY", "CACHE", "OUTCOME"):
        assert word in shown.stdout
    narrow(ok(d.cli("logs", "--user", user, COLUMNS="80")))


def test_usage_and_logs_refuse_bad_input(d: DaemonProc) -> None:
    by = d.cli("usage", "--by", "weekday")
    assert by.returncode == 2 and "weekday" in by.stderr, by.stderr
    since = d.cli("usage", "--since", "soon")
    assert since.returncode == 2 and "--since" in since.stderr and "hint:" in since.stderr, since.stderr
    audit = d.cli("audit", "--since", "last tuesday")
    assert audit.returncode == 2 and "--since" in audit.stderr, audit.stderr
    none = d.cli("logs", "-n", "0")
    assert none.returncode == 2, none.stderr


# --------------------------------------------------------------------------- external calls: audit, cost, alerts
def test_external_call_is_audited_costed_and_alerted(d: DaemonProc) -> None:
    user = new_user("spender")
    # 8 output tokens at $1000/1M = $0.008: 84% of $0.0095, past the 70% threshold (an alert), under 85%.
    ok(d.cli("budget", "set", "--user", user, "--daily", "0.0095"))
    tail = Tail(d, "--json", "--kinds", "request,alert")
    try:
        subscribed(d, tail)
        answer = ask(d, user, "a b c d e f g h i j k l", "-m", EXTERNAL, "--class", "public")
        assert answer["backend"] == "stub" and answer["text"].startswith("echo: a b c"), answer
        assert answer["usage"]["completion_tokens"] == 8 and answer["cost_usd"] == pytest.approx(0.008)

        seen: dict[str, dict[str, Any]] = {}  # the alert comes first: raised as the call settles
        while len(seen) < 2 and (line := tail.next(lambda s: json_of(user)(s) or json_of(user, "alert")(s))):
            seen[json.loads(line)["kind"]] = json.loads(line)
        assert set(seen) == {"request", "alert"}, seen
        event = seen["request"]
        assert event["data"]["id"] == answer["request_id"] and event["data"]["provider"] == "stub"
        assert event["data"]["cost_usd"] == pytest.approx(0.008)
        alert = seen["alert"]["data"]
        assert (alert["kind"], alert["level"], alert["data"]["threshold"]) == ("budget", "warning", 70)
        assert user in alert["message"]

        calls = [c for c in as_json(d.cli("audit", "--json")) if c["request_id"] == answer["request_id"]]
        assert len(calls) == 1, calls
        call = calls[0]
        assert (call["user"], call["provider"], call["model"], call["key"]) == (user, "stub", EXTERNAL, "k1")
        assert (call["class"], call["status"], call["tokens_out"]) == ("public", "ok", 8)
        assert call["cost_usd"] == pytest.approx(0.008) and call["reserved_usd"] >= call["cost_usd"]
        assert "class public allowed" in call["reason"], call["reason"]
        shown = ok(d.cli("audit", COLUMNS="200"))
        line = next(line for line in shown.stdout.splitlines() if user in line)
        for word in (f"stub/{EXTERNAL}", "k1", "public", "ok", "$0.008", "class public allowed"):
            assert word in line, shown.stdout
        assert "REASON" in shown.stdout
        narrow(ok(d.cli("audit", COLUMNS="80")))
        assert STUB_SECRET not in shown.stdout + json.dumps(call)

        usage = as_json(d.cli("usage", "--json", "--user", user, "--by", "provider"))
        assert [(r["group"], r["requests"], r["external"]) for r in usage["rows"]] == [("stub", 1, 1)]
        assert usage["total"]["cost_usd"] == pytest.approx(0.008)

        row = next(r for r in budget_rows(d) if r["scope"] == "user" and r["name"] == user)
        assert (row["spent_usd"], row["reserved_usd"]) == (pytest.approx(0.008), 0.0)
        assert row["left_usd"] == pytest.approx(0.0015) and row["percent"] == pytest.approx(84.21, abs=0.01)
        assert row["thresholds_passed"] == [70]
        table = ok(d.cli("budget", "show", COLUMNS="160"))
        line = next(line for line in table.stdout.splitlines() if f"user {user} daily" in line)
        for word in ("$0.0095", "$0.008", "$0.0015", "84%"):
            assert word in line, table.stdout
        assert "recent alerts" in table.stdout and "threshold 70%" in table.stdout
        narrow(ok(d.cli("budget", "show", COLUMNS="80")))

        alerts = [a for a in as_json(d.cli("alerts", "--json")) if user in a["message"]]
        assert [(a["level"], a["data"]["threshold"]) for a in alerts] == [("warning", 70)]
        listed = ok(d.cli("alerts", COLUMNS="160")).stdout
        assert "warning" in listed and "budget" in listed and "84% spent" in listed, listed

        refused = d.cli("ask", "--max-tokens", "8", "--user", user, "-m", EXTERNAL, "--class", "public", "again")
        assert refused.returncode == 1 and "budget" in refused.stderr and "hint:" in refused.stderr
        last = as_json(d.cli("logs", "--json", "--user", user, "-n", "1"))[0]
        assert (last["outcome"], last["provider"]) == ("refused", "")
    finally:
        tail.stop()
        d.cli("budget", "rm", "--user", user)


# --------------------------------------------------------------------------- budgets
def test_budget_set_show_rm_round_trip(d: DaemonProc) -> None:
    set_global = ok(d.cli("budget", "set", "--daily", "5", "--monthly", "100"))
    assert "global daily budget set to $5.00" in set_global.stdout, set_global.stdout
    assert "global monthly budget set to $100.00" in set_global.stdout
    assert config_budgets(d)["global"] == {"daily": 5.0, "monthly": 100.0}
    now = time.time()
    rows = {(r["scope"], r["period"]): r for r in budget_rows(d)}
    day, month = rows[("global", "day")], rows[("global", "month")]
    assert (day["limit_usd"], day["spent_usd"], day["left_usd"], day["percent"]) == (5.0, 0.0, 5.0, 0.0)
    assert (month["limit_usd"], month["left_usd"]) == (100.0, 100.0)
    assert day["period_id"].startswith("day:") and month["period_id"].startswith("month:")
    assert now < day["resets_at"] <= now + 25 * 3600 and day["resets_at"] <= month["resets_at"]

    ok(d.cli("budget", "set", "--user", "alice", "--daily", "1.5"))
    each = as_json(d.cli("budget", "set", "--provider", "*", "--monthly", "20", "--json"))
    assert any(r["scope"] == "provider" and r["name"] == "*" and r["limit_usd"] == 20.0 for r in each["limits"])
    budgets = config_budgets(d)
    assert budgets["users"]["alice"] == {"daily": 1.5} and budgets["providers"]["*"] == {"monthly": 20.0}

    shown = ok(d.cli("budget", "show", COLUMNS="80"))
    for word in ("LIMIT", "BUDGET", "SPENT", "RESERVED", "LEFT", "USED", "RESETS", "thresholds: 70% warn"):
        assert word in shown.stdout, shown.stdout
    for label, amount in (("global daily", "$5.00"), ("user alice daily", "$1.50"), ("each provider", "$20.00")):
        line = next((line for line in shown.stdout.splitlines() if line.startswith(label)), "")
        assert amount in line and "0%" in line, shown.stdout
    narrow(shown)

    missing = d.cli("budget", "rm", "--user", "alice", "--monthly")
    assert missing.returncode == 1 and "no monthly user alice budget" in missing.stderr, missing.stderr
    assert "removed the user alice daily budget" in ok(d.cli("budget", "rm", "--user", "alice")).stdout
    ok(d.cli("budget", "rm", "--provider", "*"))
    ok(d.cli("budget", "rm", "--daily"))
    assert [(r["scope"], r["period"]) for r in budget_rows(d)] == [("global", "month")]
    assert config_budgets(d)["global"] == {"monthly": 100.0}
    assert not config_budgets(d)["users"].get("alice")
    ok(d.cli("budget", "rm"))
    assert budget_rows(d) == []
    assert "no budgets" in ok(d.cli("budget", "show")).stdout
    gone = d.cli("budget", "rm")
    assert gone.returncode == 1 and "no daily or monthly global budget" in gone.stderr and "hint:" in gone.stderr


def test_budget_set_refuses_bad_input(d: DaemonProc) -> None:
    config = d.home / "config" / "config.toml"
    before = config.read_text()
    cases = [
        (("budget", "set"), "--daily"),
        (("budget", "set", "--user", "ann", "--model", "m", "--daily", "1"), "at most one of"),
        (("budget", "set", "--daily", "-1"), "--daily"),
        (("budget", "set", "--monthly", "lots"), "--monthly"),
        (("budget", "set", "--daily", "nan"), "--daily"),
        (("budget", "set", "--daily", "inf"), "--daily"),
        (("budget", "set", "--user", " ", "--daily", "1"), "--user needs a name"),
        (("budget", "rm", "--user", "ann", "--provider", "p"), "at most one of"),
    ]
    for args, words in cases:
        result = d.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert words in result.stderr, (args, result.stderr)
    assert config.read_text() == before
    assert not [r for r in budget_rows(d) if r["name"] in ("ann", "m", " ")]


# --------------------------------------------------------------------------- events
def test_events_tail_requests_live(d: DaemonProc) -> None:
    as_lines, plain = Tail(d, "--json"), Tail(d)
    try:
        subscribed(d, as_lines, plain)
        user = new_user("live")
        answer = ask(d, user, "Say hi.")
        line = as_lines.next(json_of(user))
        assert line is not None, "no request event"
        event = json.loads(line)  # one event, one line of JSON
        assert event["kind"] == "request" and isinstance(event["id"], int) and event["ts"] > 0
        data = event["data"]
        assert (data["id"], data["user"], data["model"], data["outcome"]) == (answer["request_id"], user, MODEL, "ok")
        assert data["tokens_out"] == answer["usage"]["completion_tokens"]
        text = plain.next(lambda s: user in s)
        assert text is not None and " request " in text and MODEL in text and "via local:llama.cpp" in text, text
        tokens = f"{answer['usage']['prompt_tokens']}→{answer['usage']['completion_tokens']} tok"
        assert tokens in text and text.endswith(" ok"), text

        replay = Tail(d, "--json", "--after", str(event["id"] - 1))  # from the daemon's history
        try:
            again = replay.next(timeout=30)
            assert again is not None and json.loads(again)["id"] == event["id"], again
        finally:
            replay.stop()
    finally:
        code, err = plain.stop(signal.SIGINT)  # Ctrl-C is how a tail ends: quietly, exit 0
        assert code == 0 and "Traceback" not in err, err
        as_lines.stop()

    empty = d.cli("events", "--kinds", " , ")
    assert empty.returncode == 2 and "--kinds" in empty.stderr, empty.stderr


def test_events_tail_outlives_a_quiet_spell(d: DaemonProc) -> None:
    """Nothing happens for longer than the daemon's keep-alive interval (15 s); the tail still shows what comes
    next, both on the bare stream and through `tiqo events` (which would reconnect with Last-Event-ID, as
    server-sent events clients do)."""
    user = new_user("quiet")
    raw: dict[str, Any] = {}

    def listen() -> None:  # the bare stream, no reconnection
        try:
            with d.client(60).stream("GET", "/tiqo/events", params={"kinds": "request"}) as response:
                for line in response.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:])["data"]["user"] == user:
                        raw["event"] = json.loads(line[5:])
                        return
        except Exception as exc:
            raw["error"] = repr(exc)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    tail = Tail(d, "--json", "--kinds", "request")
    try:
        subscribed(d, tail)
        time.sleep(17)
        answer = ask(d, user, "Say hi.")
        line = tail.next(json_of(user), timeout=30)
        assert line is not None and json.loads(line)["data"]["id"] == answer["request_id"], line
    finally:
        code, err = tail.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in err, err
    listener.join(30)
    assert "error" not in raw, raw  # the bare stream survives its keep-alives too
    assert raw.get("event", {}).get("kind") == "request", raw


def test_events_say_when_the_daemon_goes_away(fresh_daemon: DaemonProc) -> None:
    tail = Tail(fresh_daemon, "--json")
    try:
        subscribed(fresh_daemon, tail)
        fresh_daemon.stop()
        tail.proc.wait(30)
    finally:
        code, err = tail.stop()
    assert code == 3, err
    assert "event stream" in err and "hint:" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- models add --premium
def test_models_add_premium(d: DaemonProc) -> None:
    added = ok(d.cli("models", "add", "prem-m", "--provider", "stub", "--price-in", "5", "--premium"))
    assert "added prem-m → stub/prem-m" in added.stdout and "premium" in added.stdout, added.stdout
    try:
        rows = {m["name"]: m for m in as_json(d.cli("models", "list", "--json"))}
        assert rows["prem-m"]["premium"] is True and rows[EXTERNAL]["premium"] is False
        config = tomllib.loads((d.home / "config" / "config.toml").read_text())
        assert config["models"]["prem-m"]["premium"] is True
        local = d.cli("models", "add", "x1", "/tmp/x.gguf", "--premium")
        assert local.returncode == 2 and "--premium" in local.stderr, local.stderr
    finally:
        ok(d.cli("models", "rm", "prem-m"))


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [["usage"], ["logs"], ["audit"], ["alerts"], ["events"], ["budget", "show"], ["budget", "set"], ["budget", "rm"]],
    ids=" ".join,
)
def test_help_has_an_example(command: list[str]) -> None:
    from tiqo.cli.app import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "tiqo " + " ".join(command) in result.output
