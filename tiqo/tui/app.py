"""``tiqo dash``: a live terminal dashboard of the daemon (textual).

Start-up state comes from the daemon's routes, then everything moves with ``/tiqo/events``; parts that an event
only says have changed (budget, keys, loaded models) are fetched again when it arrives — the UI never polls. When
the daemon goes away the status line says so and the feed reconnects once its socket answers again."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from tiqo.client import ApiError, DaemonUnavailable, TiqoClient
from tiqo.tui.feed import Feed, fetch, snapshot
from tiqo.tui.model import LEVELS, DashState, Severity
from tiqo.tui.screens import ExplainScreen, HelpScreen, LoadScreen
from tiqo.tui.widgets import (
    AlertsTable,
    Budgets,
    JobsTable,
    KeysTable,
    ModelsTable,
    Overview,
    RequestsTable,
    selected_key,
)

TABS = ("overview", "budgets", "keys", "models", "requests", "alerts", "jobs")
WIDE = 120  # columns from which tables show more and charts sit side by side
TALL = 36  # lines from which the overview lists the latest requests
MODEL_ACTIONS = {"load", "pin", "unload"}
DEBOUNCE_S = 0.2  # a burst of events fetches the changed parts once
DRAW_S = 0.1  # and is drawn once


class DashApp(App[None]):
    CSS_PATH = "dash.tcss"
    TITLE = "tiqo dash"
    ENABLE_COMMAND_PALETTE = False  # every action has its key (see ?); the footer keeps its space at 80 columns
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        *(Binding(str(i + 1), f"show_tab('{tab}')", tab, show=False) for i, tab in enumerate(TABS)),
        Binding("r", "refresh", "refresh"),
        Binding("l", "load", "load model"),
        Binding("p", "pin", "pin"),
        Binding("u", "unload", "unload"),
    ]

    def __init__(self, client: TiqoClient | None = None) -> None:
        super().__init__()
        if client is None:
            from tiqo.core.settings import Settings

            client = TiqoClient(Settings.load(), autostart=False)
        self.client = client
        self.state = DashState()
        self.connected = False
        self.down: tuple[str, str | None] | None = None
        self.events_seen = 0
        self.wide = False
        self._wanted: set[str] = set()
        self._debounce: Timer | None = None
        self._key_timer: Timer | None = None
        self._dirty: set[str] = set()
        self._draw_timer: Timer | None = None

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static("connecting to the tiqo daemon…", id="status")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("1 Overview", id="overview"):
                yield Overview(id="overview-panel")
            with TabPane("2 Budgets", id="budgets"):
                yield Budgets(id="budgets-panel")
            with TabPane("3 Keys", id="keys"):
                yield KeysTable(id="keys-table")
                yield Static(id="keys-note", classes="dim")
            with TabPane("4 Models", id="models"):
                yield Static(id="memory")
                yield ModelsTable(id="models-table")
                yield Static("l load a model · p pin the selected one · u unload it", classes="dim")
            with TabPane("5 Requests", id="requests"):
                yield RequestsTable(id="requests-table")
                yield Static("enter: how the selected request was routed", classes="dim")
            with TabPane("6 Alerts", id="alerts"):
                yield AlertsTable(id="alerts-table")
            with TabPane("7 Jobs", id="jobs"):
                yield JobsTable(id="jobs-table")
                yield Static("your jobs (video, images): `tiqo jobs show ID`, `tiqo jobs cancel ID`", classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.feed = Feed(self.client, self._on_snapshot, self._on_event, self._on_down)
        self.run_worker(self.feed.run(), name="feed", group="feed", exclusive=True, exit_on_error=False)
        self.set_interval(1.0, self._tick)  # clocks and keep-alive countdowns only; data arrives as events

    def on_resize(self) -> None:
        wide = self.size.width >= WIDE
        self.screen.set_class(wide, "wide")
        self.screen.set_class(self.size.height >= TALL, "tall")
        if wide != self.wide:
            self.wide = wide
            self._draw({"requests"})

    # ------------------------------------------------------------ feed callbacks (on the app's loop)
    def _on_snapshot(self, snap: dict[str, Any]) -> None:
        self.state.load_snapshot(snap)
        self.connected, self.down = True, None
        self._draw({"overview", "budget", "keys", "ps", "requests", "alerts", "jobs", "status"})
        if self.feed.connections > 1:
            self.notify("reconnected to the tiqo daemon", title="daemon")

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        changed = self.state.apply(event)
        if event.get("kind") == "alert":
            data = event.get("data") or {}
            severity: Severity = LEVELS.get(str(data.get("level")), "information")
            title = str(data.get("kind") or "alert")
            self.notify(str(data.get("message")), title=title, severity=severity, timeout=8, markup=False)
        if "snapshot" in changed:
            self.action_refresh()
        self._want(changed & {"budget", "keys", "ps"})
        self._draw_soon(changed - {"budget", "keys", "ps", "snapshot"} | {"status"})

    def _on_down(self, message: str, hint: str | None) -> None:
        was = self.connected
        self.connected, self.down = False, (message, hint)
        self._draw({"status"})
        if was:
            self.notify(f"{message}; reconnecting when it is back", title="daemon gone", severity="error", markup=False)

    # ------------------------------------------------------------ fetching what events say has changed
    def _want(self, parts: set[str]) -> None:
        if not parts:
            return
        self._wanted |= parts
        if self._debounce is None:
            self._debounce = self.set_timer(DEBOUNCE_S, self._fetch_wanted)

    def _fetch_wanted(self) -> None:
        parts, self._wanted, self._debounce = self._wanted, set(), None
        self.fetch_parts(parts)

    @work(thread=True, group="fetch", exit_on_error=False)
    def fetch_parts(self, parts: set[str]) -> None:
        try:
            got = {part: fetch(self.client, part) for part in sorted(parts)}
        except (DaemonUnavailable, ApiError, OSError):
            return  # the feed notices and says so
        self.call_from_thread(self._fetched, got)

    def _fetched(self, got: dict[str, Any]) -> None:
        if "budget" in got:
            self.state.budget = got["budget"]
        if "keys" in got:
            self.state.keys = got["keys"]
        if "ps" in got:
            self.state.set_ps(got["ps"])
        self._draw(set(got))

    @work(thread=True, group="fetch", exit_on_error=False)
    def fetch_all(self) -> None:
        try:
            snap = snapshot(self.client)
        except (DaemonUnavailable, ApiError, OSError):
            return
        self.call_from_thread(self._on_snapshot_again, snap)

    def _on_snapshot_again(self, snap: dict[str, Any]) -> None:
        self.state.load_snapshot(snap)
        self._draw({"overview", "budget", "keys", "ps", "requests", "alerts", "jobs", "status"})

    def _schedule_key_refresh(self) -> None:
        """Cooldowns and exhaustion end by the clock, not by an event: fetch the keys again when the first ends."""
        now = time.time()
        ends = [float(k["until"]) for k in self.state.keys if k.get("until") and float(k["until"]) > now]
        if self._key_timer is not None:
            self._key_timer.stop()
            self._key_timer = None
        if ends:
            self._key_timer = self.set_timer(min(ends) - now + 0.5, lambda: self._want({"keys"}))

    # ------------------------------------------------------------ drawing
    def _draw_soon(self, parts: set[str]) -> None:
        """Draw once per burst of events: a busy daemon sends hundreds a second, a person reads a few."""
        self._dirty |= parts
        if self._draw_timer is None:
            self._draw_timer = self.set_timer(DRAW_S, self._draw_dirty)

    def _draw_dirty(self) -> None:
        parts, self._dirty, self._draw_timer = self._dirty, set(), None
        self._draw(parts)

    def _draw(self, parts: set[str]) -> None:
        try:
            self._draw_parts(parts)
        except NoMatches:  # a timer or a fetch can land while a screen is still composing or already torn down
            return

    def _draw_parts(self, parts: set[str]) -> None:
        s = self.state
        if "status" in parts:
            self._draw_status()
        if parts & {"overview", "budget", "alerts"}:
            self.query_one(Overview).show(s)
        if "budget" in parts:
            self.query_one(Budgets).show(s)
        if "keys" in parts:
            self.query_one(KeysTable).show(s)
            note = "" if s.keys else "no API keys: `tiqo keys add PROVIDER` adds one (read from a prompt or stdin)"
            self.query_one("#keys-note", Static).update(note)
            self._schedule_key_refresh()
        if "ps" in parts:
            self.query_one("#memory", Static).update(s.memory_line())
            self.query_one(ModelsTable).show(s)
        if "requests" in parts:
            self.query_one(RequestsTable).show(s, self.wide)
        if "alerts" in parts:
            self.query_one(AlertsTable).show(s)
        if "jobs" in parts:
            self.query_one(JobsTable).show(s)

    def _draw_status(self) -> None:
        status = self.query_one("#status", Static)
        status.set_class(not self.connected, "down")
        if self.connected:
            h = self.state.health
            text = Text("● ", style="green")
            text.append(f"tiqo {h.get('version', '?')} · pid {h.get('pid', '?')} · {self.client.socket_path}")
            text.append(f" · {self.events_seen} events", style="dim")
        elif self.down is not None:
            text = Text("✗ ", style="bold")
            text.append(f"{self.down[0]} — reconnecting when it is back")
            text.append(f" ({self.down[1]})" if self.down[1] else " (start it with `tiqo daemon start`)")
        else:
            text = Text("connecting to the tiqo daemon…")
        status.update(text)

    def _tick(self) -> None:
        if not self.connected:
            return
        try:
            self.query_one(Overview).show(self.state)
            if self.state.ps.get("models"):
                self.query_one(ModelsTable).show(self.state)
        except NoMatches:  # the timer can fire while a screen is still composing or already being torn down
            return

    # ------------------------------------------------------------ actions
    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()
        pane = event.pane
        tables = pane.query(DataTable)
        if tables:
            tables.first().focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in MODEL_ACTIONS:
            return self.query_one(TabbedContent).active == "models"  # offered on the Models tab only
        return True

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        self.fetch_all()

    def action_load(self) -> None:
        loaded = {str(m["name"]) for m in self.state.ps.get("models") or []}
        names = self.state.local_models()
        if not names:
            self.notify("no local models in the catalog (`tiqo models add NAME PATH` adds one)", severity="warning")
            return

        def chosen(choice: tuple[str, bool] | None) -> None:
            if choice is not None:
                self.load_model(*choice)

        self.push_screen(LoadScreen(names, loaded), chosen)

    def _selected_model(self) -> str | None:
        name = selected_key(self.query_one(ModelsTable))
        if name is None:
            self.notify("no model is loaded; press l to load one", severity="warning")
        return name

    def action_pin(self) -> None:
        name = self._selected_model()
        if name is not None:
            self.load_model(name, True)

    def action_unload(self) -> None:
        name = self._selected_model()
        if name is not None:
            self.unload_model(name)

    @work(thread=True, group="actions", exit_on_error=False)
    def load_model(self, name: str, pinned: bool) -> None:
        self.call_from_thread(self.notify, f"{'pinning' if pinned else 'loading'} {name}…", timeout=3)
        try:
            row = self.client.load(name, "-1" if pinned else None)
        except (ApiError, DaemonUnavailable) as exc:
            self.call_from_thread(self._failed, f"cannot load {name}", exc)
            return
        how = "pinned (never unloads)" if pinned else f"loaded in {float(row.get('load_seconds') or 0):.2f}s"
        self.call_from_thread(self.notify, f"{name} {how}", title="models")
        self.call_from_thread(self._want, {"ps"})  # keep-alive changes publish no event

    @work(thread=True, group="actions", exit_on_error=False)
    def unload_model(self, name: str) -> None:
        try:
            done = self.client.unload(name)["unloaded"]
        except (ApiError, DaemonUnavailable) as exc:
            self.call_from_thread(self._failed, f"cannot unload {name}", exc)
            return
        self.call_from_thread(self.notify, f"{name} {'unloaded' if done else 'was not loaded'}", title="models")
        self.call_from_thread(self._want, {"ps"})

    def _failed(self, what: str, exc: ApiError | DaemonUnavailable) -> None:
        hint = f"\n{exc.hint}" if exc.hint else ""
        self.notify(f"{what}: {exc.message}{hint}", title="error", severity="error", timeout=10, markup=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if not isinstance(event.data_table, RequestsTable):
            return
        rid = event.row_key.value
        row = next((r for r in self.state.requests if str(r.get("id")) == rid), None)
        if row is not None:
            self.push_screen(ExplainScreen(row, self.client))
