"""`tiqo dash` against real daemons fed by real requests: the bundled local model (llama.cpp) and stub providers
that speak OpenAI's wire protocol (tests/upstreams.py). Driven with textual's pilot (keys, clicks, assertions on
widgets) and compared with text snapshots in tests/snapshots/ (TIQO_UPDATE_SNAPSHOTS=1 rewrites them)."""

from __future__ import annotations

import asyncio
import difflib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.conftest import DaemonProc, home_env, short_home, start_daemon
from tests.upstreams import Upstream

SNAPSHOTS = Path(__file__).parent / "snapshots"
MODEL = "smollm2-135m"
GOOD = "sk-dash-good-" + secrets.token_hex(8)
PRICE_OUT = 1000.0  # USD per 1M output tokens: 8 tokens cost $0.008
PROMPT = "please repeat these nine words back to me now"  # the stub echoes: more than 8 tokens, cut at max_tokens


# --------------------------------------------------------------------------- daemons and requests
def make_daemon(stub: Upstream, down: Upstream | None = None, **env: str) -> DaemonProc:
    """A daemon with the bundled model, provider `stub` (key k1) serving `stub-m`, and when ``down`` is given a
    keyless provider `down` (serving `down-m`) on a stub that answers 500 to everything."""
    home = short_home()
    config: dict[str, Any] = {
        "providers": {"stub": {"kind": "openai", "base_url": stub.url + "/v1"}},
        "models": {"stub-m": {"provider": "stub", "upstream_model": "up", "price_in": 0.0, "price_out": PRICE_OUT}},
    }
    if down is not None:
        config["providers"]["down"] = {"kind": "openai", "base_url": down.url + "/v1", "auth": "none"}
        config["models"]["down-m"] = {"provider": "down", "upstream_model": "up", "price_out": PRICE_OUT}
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"stub": {"k1": {"secret": GOOD}}}))
    keys.chmod(0o600)
    return start_daemon(home, TIQO_NO_AUTOSTART="1", **env)


@pytest.fixture(scope="module")
def d(ups: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    daemon = make_daemon(ups[0], ups[1], TIQO_BREAKER_FAILURES="2", TIQO_BREAKER_COOLDOWN="10m")
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def chat(d: DaemonProc, model: str, prompt: str = "Say hi.", max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **extra}
    r = d.client().post("/v1/chat/completions", json=body, headers={"x-tiqo-user": "dash"})
    return {"status": r.status_code, "headers": dict(r.headers), "body": r.json()}


def dash_client(d: DaemonProc) -> Any:
    from tiqo.client import TiqoClient
    from tiqo.core.settings import Settings

    return TiqoClient(Settings.load(env=d.env), autostart=False)


# --------------------------------------------------------------------------- pilot helpers
async def until(pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Let the app run until ``predicate()`` holds (semantics, not speed: the timeout is generous)."""
    for _ in range(int(timeout / 0.05)):
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    pytest.fail(f"timed out waiting for {what}\nscreen:\n{screen_text(pilot.app)}")


async def off_loop(fn: Callable[[], Any]) -> Any:
    """A blocking call (a real request) without stopping the app's event loop."""
    return await asyncio.to_thread(fn)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def screen_text(app: Any) -> str:
    """The screen as plain text, as a terminal shows it (what `export_screenshot` draws, without the SVG)."""
    from rich.console import Console

    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def cells(table: Any) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def static_text(widget: Any) -> str:
    return str(widget.render())


def toasts(app: Any) -> list[str]:
    from textual.widgets._toast import Toast

    return [str(t.render()) for t in app.screen.query(Toast)]


# --------------------------------------------------------------------------- the CLI stays light
def test_importing_the_cli_never_imports_textual() -> None:
    code = "import sys, tiqo.cli.main; print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))"
    home = short_home()
    try:
        out = subprocess.run([sys.executable, "-c", code], env=home_env(home), capture_output=True, text=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


# --------------------------------------------------------------------------- live data and navigation
def test_live_requests_overview_keys_models_and_routing_explanation(d: DaemonProc) -> None:
    from textual.widgets import TabbedContent

    from tiqo.tui.app import DashApp
    from tiqo.tui.screens import ExplainScreen
    from tiqo.tui.widgets import KeysTable, ModelsTable, RequestsTable

    async def scenario() -> None:
        app = DashApp(dash_client(d))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.connected, "the first snapshot")
            pid = d.client().get("/tiqo/health").json()["pid"]
            assert f"pid {pid}" in static_text(app.query_one("#status"))
            before = app.state.overview.requests
            local = await off_loop(lambda: chat(d, MODEL))
            external = await off_loop(lambda: chat(d, "stub-m", PROMPT, 8))
            assert (local["status"], external["status"]) == (200, 200), (local, external)
            ids = {local["headers"]["x-tiqo-request-id"], external["headers"]["x-tiqo-request-id"]}
            await until(pilot, lambda: ids <= {r["id"] for r in app.state.requests}, "both request events")

            ov = app.state.overview
            assert ov.requests == before + 2 and ov.external >= 1 and ov.local >= 1
            mix = static_text(app.query_one("#mix"))
            assert "local " in mix and "external " in mix and "errors 0" in mix, mix

            await pilot.press("5")
            assert app.query_one(TabbedContent).active == "requests"
            table = app.query_one(RequestsTable)
            rows = {r[2]: r for r in cells(table)}  # by backend
            assert rows["local:llama.cpp"][1] == MODEL and rows["local:llama.cpp"][-1] == "ok", rows
            assert rows["stub"][1] == "stub-m" and rows["stub"][4] == "$0.008", rows  # 8 tokens at $1000/1M

            # enter on the external request: its route and why it was allowed off the machine
            index = next(i for i, r in enumerate(cells(table)) if r[2] == "stub")
            table.focus()
            table.move_cursor(row=index)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ExplainScreen), "the explanation")
            text = lambda: static_text(app.screen.query_one("#explain-text"))  # noqa: E731
            await until(pilot, lambda: "allowed because" in text(), "the audit reason")
            assert "route: model stub-m" in text() and "allowed to stub" in text(), text()
            await pilot.press("escape")
            assert not isinstance(app.screen, ExplainScreen)

            await pilot.click("#--content-tab-keys")  # the mouse works too
            assert app.query_one(TabbedContent).active == "keys"
            await until(pilot, lambda: any(r[3].startswith("1/") for r in cells(app.query_one(KeysTable))), "usage")
            key = {r[0]: r for r in cells(app.query_one(KeysTable))}["stub/k1"]
            assert GOOD not in "".join(key) and "…" in key[1] and key[2] == "healthy", key
            assert "/∞ rpd" in key[3], key

            await pilot.press("4")
            await until(pilot, lambda: MODEL in {r[0] for r in cells(app.query_one(ModelsTable))}, "loaded model")
            assert "memory" in static_text(app.query_one("#memory"))

            await pilot.press("question_mark")
            assert "this help" in screen_text(app)
            await pilot.press("escape")

    run(scenario)


def test_models_load_pin_and_unload(d: DaemonProc) -> None:
    from textual.widgets import OptionList

    from tiqo.tui.app import DashApp
    from tiqo.tui.screens import LoadScreen
    from tiqo.tui.widgets import ModelsTable

    def ps() -> dict[str, Any]:
        return {m["name"]: m for m in d.client().get("/tiqo/ps").json()["models"]}

    async def scenario() -> None:
        app = DashApp(dash_client(d))
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await until(pilot, lambda: app.connected, "the first snapshot")
            await pilot.press("4")
            rows = lambda: {r[0]: r for r in cells(app.query_one(ModelsTable))}  # noqa: E731

            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LoadScreen), "the model picker")
            options = app.screen.query_one(OptionList)
            names = [str(options.get_option_at_index(i).id) for i in range(options.option_count)]
            assert MODEL in names and "stub-m" not in names  # external models do not load
            options.highlighted = names.index(MODEL)
            await pilot.press("enter")
            await until(pilot, lambda: rows().get(MODEL, [""] * 6)[5].startswith("in "), "a keep-alive countdown")
            assert ps()[MODEL]["keep_alive_s"] is not None

            await pilot.press("p")  # pin the selected (only) model
            await until(pilot, lambda: rows().get(MODEL, [""] * 6)[5] == "pinned", "the pinned model")
            assert ps()[MODEL]["keep_alive_s"] is None  # -1: never unloads

            await pilot.press("u")
            await until(pilot, lambda: MODEL not in rows(), "the unloaded model")
            assert MODEL not in ps()
            await until(pilot, lambda: any("unloaded" in t for t in toasts(app)), "the unload toast")

            await pilot.press("1")
            assert not app.check_action("unload", ())  # model actions belong to the Models tab

    run(scenario)


def test_alerts_for_a_disabled_key_an_open_breaker_and_a_budget(d: DaemonProc, ups: tuple[Upstream, Upstream]) -> None:
    from tiqo.tui.app import DashApp
    from tiqo.tui.widgets import AlertsTable, Budgets, Gauge, KeysTable

    stub, down = ups
    stub.valid_keys = {GOOD}
    down.set_mode("500")
    bad = "sk-dash-bad-" + secrets.token_hex(8)
    http = d.client()

    async def scenario() -> None:
        app = DashApp(dash_client(d))
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await until(pilot, lambda: app.connected, "the first snapshot")

            def kinds() -> set[str]:
                return {str(a.get("kind")) for a in app.state.alerts}

            # a key the provider rejects: disabled (401), the request still answered by the good key
            assert http.post("/tiqo/keys", json={"provider": "stub", "name": "bad", "secret": bad}).status_code == 201
            answers = [await off_loop(lambda: chat(d, "stub-m")) for _ in range(2)]
            assert all(a["status"] == 200 for a in answers), answers
            await until(pilot, lambda: "key" in kinds(), "the key alert")
            await until(pilot, lambda: any("key stub/bad is disabled" in t for t in toasts(app)), "the key toast")
            await until(pilot, lambda: "disabled" in {r[2][:8] for r in cells(app.query_one(KeysTable))}, "state")
            key = {r[0]: r for r in cells(app.query_one(KeysTable))}["stub/bad"]
            assert "upstream rejected the key" in key[2] + key[4] and bad not in "".join(key), key

            # a provider failing: its breaker opens after 2 failures (TIQO_BREAKER_FAILURES=2)
            for _ in range(2):
                await off_loop(lambda: chat(d, "down-m"))
            await until(pilot, lambda: "breaker" in kinds(), "the breaker alert")
            # a toast mounts a frame or more after its alert lands in the state: wait for it, do not race it
            opened = "circuit breaker of provider down opened"
            await until(pilot, lambda: any(opened in t for t in toasts(app)), "the breaker toast")

            # a budget crossing 70 %: 8 tokens at $1000/1M = $0.008 of $0.01
            limit = {"scope": "provider", "name": "stub", "period": "day", "usd": 0.01}
            assert http.put("/tiqo/budget", json=limit).status_code == 200
            assert (await off_loop(lambda: chat(d, "stub-m", PROMPT, 8)))["status"] == 200
            await until(pilot, lambda: "budget" in kinds(), "the budget alert")
            await until(pilot, lambda: any("80% spent" in t for t in toasts(app)), "the budget toast")

            await pilot.press("2")
            await until(pilot, lambda: any(g.percent >= 80 for g in app.query(Gauge)), "the budget gauge")
            text = " ".join(static_text(w) for w in app.query(".limit"))
            assert "provider stub daily" in text and "left of $0.01" in text, text
            assert len(app.query_one(Budgets).query(Gauge)) == len(app.state.budget_rows())

            await pilot.press("6")
            table = cells(app.query_one(AlertsTable))
            assert {"key", "breaker", "budget"} <= {r[2] for r in table}, table
        # the daemon keeps them too: `tiqo alerts` shows what the dashboard showed
        stored = {a["kind"] for a in http.get("/tiqo/alerts").json()["data"]}
        assert {"key", "breaker", "budget"} <= stored
        http.put("/tiqo/budget", json={**limit, "usd": None})

    try:
        run(scenario)
    finally:
        down.set_mode(None)
        stub.valid_keys = None
        http.delete("/tiqo/keys/stub/bad")


# --------------------------------------------------------------------------- the daemon going away
def test_says_when_the_daemon_goes_away_and_reconnects(ups: tuple[Upstream, Upstream]) -> None:
    from tiqo.tui.app import DashApp

    daemon = make_daemon(ups[0])
    try:

        async def scenario() -> None:
            app = DashApp(dash_client(daemon))
            async with app.run_test(size=(80, 24), notifications=True) as pilot:
                await until(pilot, lambda: app.connected, "the first snapshot")
                first = app.state.health["pid"]
                await off_loop(daemon.stop)
                await until(pilot, lambda: not app.connected, "the feed noticing")
                await until(pilot, lambda: "reconnecting" in static_text(app.query_one("#status")), "the status line")
                assert "✗" in static_text(app.query_one("#status"))
                await until(pilot, lambda: app.query_one("#status").has_class("down"), "the down style")
                gone = ("daemon gone", "reconnecting")
                await until(pilot, lambda: any(g in t for t in toasts(app) for g in gone), "the daemon-gone toast")

                again = await off_loop(lambda: start_daemon(daemon.home, TIQO_NO_AUTOSTART="1"))
                daemon.proc = again.proc
                await until(pilot, lambda: app.connected, "the reconnection")
                assert app.state.health["pid"] != first
                assert f"pid {again.proc.pid}" in static_text(app.query_one("#status"))
                answer = await off_loop(lambda: chat(daemon, MODEL))
                rid = answer["headers"]["x-tiqo-request-id"]
                await until(pilot, lambda: rid in {r["id"] for r in app.state.requests}, "a request after it")

        run(scenario)
    finally:
        daemon.stop()
        shutil.rmtree(daemon.home, ignore_errors=True)


# --------------------------------------------------------------------------- `tiqo dash` in a terminal
GREYS = {0, 7, 8, 15, 16, 231, *range(232, 256)}  # xterm's black, white and grey ramp


def colours(output: str) -> list[str]:
    """Every colour an SGR sequence sets that is not a grey (NO_COLOR makes textual draw in greys only)."""
    found = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", output):
        p = [int(x) for x in params.split(";") if x]
        i = 0
        while i < len(p):
            if p[i] in (38, 48) and i + 2 < len(p) and p[i + 1] == 5:
                if p[i + 2] not in GREYS:
                    found.append(params)
                i += 3
            elif p[i] in (38, 48) and i + 4 < len(p) and p[i + 1] == 2:
                if len(set(p[i + 2 : i + 5])) > 1:
                    found.append(params)
                i += 5
            else:
                if p[i] in (*range(31, 37), *range(91, 97)):  # red … cyan
                    found.append(params)
                i += 1
    return found


def spawn_dash(d: DaemonProc, *args: str, **env: str) -> Any:
    import pexpect

    full = {**d.env, "TERM": "xterm-256color", **env}
    if "NO_COLOR" not in env:
        full.pop("NO_COLOR", None)
    return pexpect.spawn(
        sys.executable, ["-m", "tiqo", *args, "dash"], env=full, dimensions=(24, 80), timeout=60, encoding="utf-8"
    )


def test_tiqo_dash_runs_in_a_terminal_and_respects_no_color(d: DaemonProc) -> None:
    import pexpect

    screens = {}
    for no_color in (True, False):
        child = spawn_dash(d, **({"NO_COLOR": "1"} if no_color else {}))
        try:
            child.expect("Overview")
            child.expect("events")  # connected: the status line counts events
            seen = child.before + child.after
            child.send("?")
            child.expect("this help")
            seen += child.before + child.after
            child.send("\x1b")
            time.sleep(0.5)  # a lone escape, not the start of alt+q
            child.send("q")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0, (child.exitstatus, seen[-2000:])
        screens[no_color] = seen
    assert colours(screens[True]) == [], colours(screens[True])[:5]
    assert colours(screens[False]), "without NO_COLOR the dashboard has colours"


def test_tiqo_dash_needs_a_terminal_and_a_daemon(d: DaemonProc) -> None:
    import pexpect

    piped = subprocess.run([sys.executable, "-m", "tiqo", "dash"], env=d.env, capture_output=True, text=True)
    assert piped.returncode == 2 and "needs a terminal" in piped.stderr, piped
    home = short_home()
    try:
        nobody = DaemonProc(home, home_env(home), subprocess.Popen(["true"]))
        child = spawn_dash(nobody, "--no-autostart")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 3, child.before
        assert "tiqo daemon start" in child.before, child.before
        assert not (home / "run" / "daemon.json").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- snapshots
BARS = "▁▂▃▄▅▆▇█"
VARIABLE = [  # what changes from run to run, never what the requests decided (counts, shares, costs stay)
    (re.compile(r"tiqo \d+\.\d+\.\S+"), "tiqo <version>"),
    (re.compile(r"pid \d+"), "pid <pid>"),
    (re.compile(r"\d+ events"), "<n> events"),
    (re.compile(r"\d+ this minute"), "<n> this minute"),  # the two requests may straddle a minute
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r" +\d+(\.\d)? m?s\b"), " <latency>"),
]


def masked(text: str, home: Path) -> str:
    """The screen without what changes from run to run: the temporary folder, the pid, the sparklines' shapes."""
    out = []
    for line in text.replace(str(home), "<home>").splitlines():
        if line.strip() and set(line.strip()) <= set(BARS + " "):
            line = "<sparkline>"
        for pattern, replacement in VARIABLE:
            line = pattern.sub(replacement, line)
        out.append(line.translate({ord(c): " " for c in BARS}).rstrip())  # bars showing around a dialog
    return "\n".join(out) + "\n"


def compare(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("TIQO_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if os.environ.get("TIQO_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"wrote a new snapshot {path}: look at it, then commit it")
        return
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "expected", "now"))
    assert text == expected, f"{name} changed (TIQO_UPDATE_SNAPSHOTS=1 to accept):\n{diff}"


def test_snapshots_at_80x24_and_160x40(ups: tuple[Upstream, Upstream]) -> None:
    from tiqo.tui.app import DashApp

    daemon = make_daemon(ups[0])
    try:
        http = daemon.client()
        assert http.put("/tiqo/budget", json={"scope": "global", "period": "day", "usd": 0.01}).status_code == 200
        assert chat(daemon, MODEL, temperature=0, seed=1)["status"] == 200
        assert chat(daemon, "stub-m", PROMPT, 8)["status"] == 200

        async def snapshot(w: int, h: int) -> None:
            app = DashApp(dash_client(daemon))
            async with app.run_test(size=(w, h)) as pilot:
                await until(pilot, lambda: app.connected and app.state.alerts, "the snapshot")
                await until(pilot, lambda: "budget" in static_text(app.query_one("#last-alert")), "drawn")
                await pilot.pause(0.2)
                assert app.screen.has_class("wide") == (w >= 160)
                compare(f"dash_overview_{w}x{h}.txt", masked(screen_text(app), daemon.home))
                if w == 80:
                    svg = app.export_screenshot()
                    assert svg.startswith("<svg") and "tiqo&#160;dash" in svg
                    await pilot.press("question_mark")
                    await pilot.pause(0.1)
                    compare("dash_help_80x24.txt", masked(screen_text(app), daemon.home))

        run(lambda: snapshot(80, 24))
        run(lambda: snapshot(160, 40))
    finally:
        daemon.stop()
        shutil.rmtree(daemon.home, ignore_errors=True)


# --------------------------------------------------------------------------- the state folding (pure)
def test_events_fold_into_the_state_once() -> None:
    from tiqo.tui.model import DashState

    now = 1_800_000_000.0
    row = {"id": "req_1", "ts": now, "provider": "stub", "backend": "stub", "cost_usd": 0.5, "cache": "miss"}
    state = DashState()
    state.load_snapshot({"logs": [row], "usage": {"total": {"requests": 1, "cost_usd": 0.5, "external": 1}}}, now)
    assert state.apply({"id": 7, "kind": "request", "data": row}) == set()  # already in the snapshot
    changed = state.apply({"id": 8, "kind": "request", "data": {**row, "id": "req_2", "outcome": "error"}})
    assert {"overview", "requests", "budget", "keys"} <= changed
    assert (state.overview.requests, state.overview.errors, state.overview.cost_usd) == (2, 1, 1.0)
    assert state.apply({"id": 9, "kind": "model", "data": {"event": "loaded"}}) == {"ps"}
    assert state.apply({"id": 0, "kind": "dropped", "data": {"count": 3}}) == {"snapshot"}
    assert state.last_id == 9
    tomorrow = {**row, "id": "req_3", "ts": now + 86400}
    state.apply({"id": 11, "kind": "request", "data": tomorrow})
    assert state.overview.requests == 1  # a new day starts the totals again
    assert json.dumps(state.overview_lines(now + 86400))  # formats without a terminal
