"""Screens over the dashboard: help (``?``), a request's routing explanation (Enter), picking a model to load."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tiqo.present import clock, latency, usd

HELP = """\
tiqo dash: the tiqo daemon, live (from its event stream)

  1 … 7      Overview Budgets Keys Models Requests Alerts Jobs
  tab        next widget (shift+tab: previous)
  ↑ ↓ pgup   move in a table; the mouse clicks tabs and rows
  enter      Requests: how the selected request was routed
  l          Models: load a model from the catalog
  p          Models: pin the selected model (never unloads)
  u          Models: unload the selected model
  r          fetch everything again
  ?          this help; esc closes it
  q          quit (ctrl+c too)

Budget gauges mark the alert thresholds (budget.thresholds,
70 / 85 / 95 % by default). Alerts (budget thresholds, circuit
breakers opening, keys disabled or exhausted) pop up and stay
in the Alerts tab. When the daemon stops, the status line says
so and the dashboard reconnects once it is back
(`tiqo daemon start`). NO_COLOR=1 turns colours off.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Static(Text(HELP), id="help-text")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


def explain_text(row: dict[str, Any], calls: list[dict[str, Any]], dry_run: dict[str, Any] | None) -> Text:
    """What served a request and why: the ledger row, its off-machine calls (with the reason each was allowed) and,
    when the prompt was kept, the routing decision it would get now."""
    t = Text()
    t.append(f"request {row.get('id')}\n", style="bold")
    t.append(
        f"{clock(row.get('ts'))} · user {row.get('user') or '-'} · tier {row.get('tier') or '-'} · "
        f"task {row.get('task') or '-'} · class {row.get('data_class') or '-'}\n"
    )
    t.append(f"route: {row.get('route') or '-'} · attempts {row.get('attempts') or 1}\n", style="bold")
    t.append(
        f"served by {row.get('backend') or '-'} · model {row.get('model') or '-'}"
        + (f" · key {row['key']}" if row.get("key") else "")
        + f" · {row.get('tokens_in') or 0}→{row.get('tokens_out') or 0} tokens · {usd(row.get('cost_usd'))}"
        + f" · {latency(row.get('latency_ms'))} · cache {row.get('cache') or '-'}\n"
    )
    outcome = str(row.get("outcome") or "ok")
    t.append(f"outcome: {outcome}" + (f" ({row['error']})" if row.get("error") else "") + "\n")
    if calls:
        t.append("\noff-machine calls (oldest first):\n", style="bold")
        for c in sorted(calls, key=lambda c: float(c.get("ts") or 0)):
            t.append(
                f"  {c.get('provider')}/{c.get('model')} key {c.get('key') or '-'}: {c.get('status')}"
                + (f" ({c['error']})" if c.get("error") else "")
                + f", {usd(c.get('cost_usd'))}\n    allowed because: {c.get('reason')}\n"
            )
    elif row.get("backend") != "cache" and str(row.get("provider")) == "local":
        t.append("\nanswered on this machine: no call left it\n")
    if dry_run is not None:
        t.append("\nrouting the same prompt now (dry run):\n", style="bold")
        t.append(f"  source {dry_run.get('source')} · chosen {dry_run.get('chosen') or 'none'}\n")
        for cand in dry_run.get("candidates") or []:
            mark = "✓" if cand.get("kept") else "✗"
            t.append(f"  {mark} {cand.get('model')} ({cand.get('provider')}): {cand.get('reason')}\n")
    else:
        t.append(
            "\nthe prompt is not kept (ledger.store_content = false), so the candidates are not shown again;\n"
            '`tiqo route explain "PROMPT"` shows them for any prompt\n',
            style="dim",
        )
    return t


class ExplainScreen(ModalScreen[None]):
    """The routing explanation of one request from the ledger."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "dismiss", "close")]

    def __init__(self, row: dict[str, Any], client: Any) -> None:
        super().__init__()
        self.row, self.client = row, client

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="explain", classes="dialog"):
            yield Static(explain_text(self.row, [], None), id="explain-text")

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exit_on_error=False)
    def load(self) -> None:
        calls: list[dict[str, Any]] = []
        dry_run = None
        try:
            if str(self.row.get("provider")) not in ("local", "cache", ""):
                calls = [c for c in self.client.audit(1000) if c.get("request_id") == self.row.get("id")]
            if "content" not in self.row:  # a live event carries no content; the ledger row may
                stored = [r for r in self.client.logs(500) if r.get("id") == self.row.get("id")]
                self.row = {**self.row, "content": stored[0].get("content") if stored else None}
            content = json.loads(self.row["content"]) if self.row.get("content") else None
            if content and content.get("messages"):
                body = {"messages": content["messages"], "user": self.row.get("user"), "tier": self.row.get("tier")}
                body.update(data_class=self.row.get("data_class"), task=self.row.get("task"))
                dry_run = self.client.route_explain({k: v for k, v in body.items() if v})
        except Exception as exc:  # the daemon went away: show what the row says
            self.app.call_from_thread(self.app.notify, f"could not fetch the details: {exc}", severity="warning")
        text = explain_text(self.row, calls, dry_run)
        self.app.call_from_thread(self.query_one("#explain-text", Static).update, text)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class LoadScreen(ModalScreen[tuple[str, bool] | None]):
    """Pick a model to load (enter) or to pin (p); dismissed with (name, pinned) or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel"),
        Binding("p", "pin", "pin (never unload)"),
    ]

    def __init__(self, names: list[str], loaded: set[str]) -> None:
        super().__init__()
        self.names, self.loaded = names, loaded

    def compose(self) -> ComposeResult:
        with Vertical(id="load", classes="dialog"):
            yield Static("Load which model? enter: load · p: pin (never unload) · esc: cancel", classes="title")
            options = [Option(n + ("  (loaded)" if n in self.loaded else ""), id=n) for n in self.names]
            yield OptionList(*options, id="load-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss((str(event.option.id), False))

    def action_pin(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is not None:
            self.dismiss((str(options.get_option_at_index(options.highlighted).id), True))

    def action_cancel(self) -> None:
        self.dismiss(None)
