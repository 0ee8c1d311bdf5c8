"""The dashboard's tabs: each one a widget that redraws itself from a :class:`DashState`."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import DataTable, Sparkline, Static

from tiqo.present import JOB_COLUMNS, usd
from tiqo.tui.model import MINUTES, DashState, resets_text

RECENT = 10  # requests listed on the overview of a tall terminal


class Gauge(Widget):
    """One budget limit as a bar, with a mark at each alert threshold (70 / 85 / 95 % by default)."""

    DEFAULT_CSS = "Gauge { height: 1; }"

    def __init__(self, percent: float, thresholds: list[int], **kw: Any) -> None:
        super().__init__(**kw)
        self.percent, self.thresholds = percent, thresholds

    def render(self) -> Text:
        label = f" {self.percent:5.1f}%"
        width = max(10, self.size.width - len(label) - 2)
        filled = max(0, min(width, int(self.percent / 100 * width + 1e-9)))
        marks = {min(width - 1, int(t / 100 * width)) for t in self.thresholds if 0 < t < 100}
        low, high = (min(self.thresholds), max(self.thresholds)) if self.thresholds else (100, 100)
        style = "red" if self.percent >= high else "yellow" if self.percent >= low else "green"
        bar = Text("[")
        for i in range(width):
            if i in marks:
                bar.append("┃" if i < filled else "│", style="bold")
            else:
                bar.append("█" if i < filled else "░", style=style if i < filled else "dim")
        bar.append("]")
        bar.append(label)
        return bar


class Overview(VerticalScroll):
    """Requests per minute and spend today as sparklines; cache hits, local / external share, errors."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="charts"):
            with Vertical(classes="chart"):
                yield Static(f"Requests per minute (last {MINUTES} min)", classes="title")
                yield Sparkline([0.0] * MINUTES, summary_function=max, id="rate")
                yield Static(id="rate-text")
            with Vertical(classes="chart"):
                yield Static("Spend today (per hour)", classes="title")
                yield Sparkline([0.0] * 24, summary_function=max, id="spend")
                yield Static(id="spend-text")
        yield Static(id="mix")
        yield Static(id="budget-summary")
        yield Static(id="last-alert")
        yield Static(id="recent")  # shown on tall terminals only (see dash.tcss)

    def show(self, state: DashState) -> None:
        lines = state.overview_lines()
        self.query_one("#rate", Sparkline).data = state.overview.rate(time.time())
        self.query_one("#spend", Sparkline).data = list(state.overview.spend_per_hour)
        self.query_one("#rate-text", Static).update(lines["requests"])
        self.query_one("#spend-text", Static).update(lines["spend"])
        self.query_one("#mix", Static).update(f"{lines['cache']} · {lines['share']} · {lines['errors']}")
        rows = sorted(state.budget_rows(), key=lambda r: -float(r.get("percent") or 0))
        budgets = " · ".join(f"{r['label']} {float(r['percent']):.0f}%" for r in rows[:3])
        self.query_one("#budget-summary", Static).update(
            "Budgets: " + (budgets or "no limits (`tiqo budget set --daily 5` adds one)")
        )
        latest = state.alerts[0] if state.alerts else None
        self.query_one("#last-alert", Static).update(
            Text("Last alert: " + (str(latest.get("message")) if latest else "none"))
        )
        recent = Text("Latest requests\n", style="bold")
        now = time.time()
        for r in list(state.requests)[:RECENT]:
            when, model, backend, took, cost, _cache, outcome = state.request_row(r, False, now)
            line = f"{when:>16}  {model[:24]:<24} {backend[:20]:<20} {took:>8} {cost:>10}  {outcome}\n"
            recent.append(line, "not bold")
        if not state.requests:
            recent.append("none yet\n", "not bold")
        self.query_one("#recent", Static).update(recent)


class Budgets(VerticalScroll):
    """A gauge per limit: spent, reserved by calls in flight, left, when it resets."""

    def show(self, state: DashState) -> None:
        rows = state.budget_rows()
        thresholds = [int(t) for t in state.budget.get("thresholds") or [70, 85, 95]]
        self.remove_children()
        if not rows:
            self.mount(Static("No budget limits. Add one with `tiqo budget set --daily 5` (USD per day)."))
            return
        now = time.time()
        for r in rows:
            head = Text(f"{r['label']}", style="bold")
            head.append(
                f"  {usd(r.get('spent_usd'))} spent · {usd(r.get('reserved_usd'))} reserved · "
                f"{usd(r.get('left_usd'))} left of {usd(r.get('limit_usd'))} · {resets_text(r.get('resets_at'), now)}",
                style="not bold",
            )
            self.mount(Static(head, classes="limit"), Gauge(float(r.get("percent") or 0.0), thresholds))
        marks = " / ".join(f"{t}%" for t in thresholds)
        self.mount(Static(f"marks at {marks} (budget.thresholds); `tiqo budget show` has the details", classes="dim"))


def fill(table: DataTable[Any], rows: list[tuple[str, list[Any]]], keep_cursor: bool = True) -> None:
    """Replace a table's rows (keyed), keeping the cursor on the same row key where it still exists."""
    selected = None
    if keep_cursor and table.row_count:
        try:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # empty or out of range: nothing selected
            selected = None
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected is not None:
        keys = [k for k, _ in rows]
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)


def selected_key(table: DataTable[Any]) -> str | None:
    if not table.row_count:
        return None
    try:
        value = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except Exception:
        return None
    return None if value is None else str(value)


class KeysTable(DataTable[Any]):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns("KEY", "SECRET", "STATE", "USAGE (used/limit)", "LAST ERROR")

    def show(self, state: DashState) -> None:
        now = time.time()
        rows = [(f"{r['provider']}/{r['name']}", state.key_row(r, now)) for r in state.keys]
        for e in state.replicas:  # replica endpoints: health and load instead of a secret and limits
            row = [
                f"{e['provider']} @ {e['url']}",
                "-",
                "healthy" if e.get("healthy") else "out",
                f"{e.get('outstanding', 0)} outstanding, {e.get('served', 0)} served, weight {e.get('weight', 1):g}",
                str(e.get("last_error") or "-"),
            ]
            rows.append((f"{e['provider']}@{e['url']}", row))
        fill(self, rows)


class ModelsTable(DataTable[Any]):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns("MODEL", "MEMORY", "IN FLIGHT", "QUEUED", "SERVED", "EXPIRES")

    def show(self, state: DashState) -> None:
        fill(self, [(row[0], row) for row in state.model_rows()])


class RequestsTable(DataTable[Any]):
    wide = False

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self._columns(False)

    def _columns(self, wide: bool) -> None:
        self.wide = wide
        self.clear(columns=True)
        names = ["TIME", "MODEL", "BACKEND", "LATENCY", "COST", "CACHE", "OUTCOME"]
        if wide:
            names[1:1] = ["USER"]
            names.insert(5, "TOKENS")
        self.add_columns(*names)

    def show(self, state: DashState, wide: bool) -> None:
        if wide != self.wide:
            self._columns(wide)
        now = time.time()
        rows = [(str(r.get("id")), state.request_row(r, wide, now)) for r in state.requests]
        fill(self, rows)


class AlertsTable(DataTable[Any]):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns("TIME", "LEVEL", "KIND", "MESSAGE")

    def show(self, state: DashState) -> None:
        now = time.time()
        fill(self, [(str(a.get("id") or i), state.alert_row(a, now)) for i, a in enumerate(state.alerts)])


class JobsTable(DataTable[Any]):
    """Jobs (video, images) with live progress from ``job`` events."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns(*JOB_COLUMNS)

    def show(self, state: DashState) -> None:
        fill(self, state.job_rows(time.time()))
