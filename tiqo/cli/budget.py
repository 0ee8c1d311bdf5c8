"""``tiqo budget show|set|rm``: the limits on what external models may spend (local models are never limited)."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli.ledger import JSON, level_markup
from tiqo.cli.output import EXIT_USAGE, client, console, fail, handle_errors, print_json
from tiqo.present import PERIOD_WORD, clock, fmt_duration, limit_label, usd

budget_app = typer.Typer(
    help="Show, set and remove spending limits on external models (local models are never limited).",
    no_args_is_help=True,
)


# --------------------------------------------------------------------------- budget
SCOPE_HELP = "; * = each one separately"
USER_SCOPE = typer.Option(None, "--user", "-u", help="A user's limit" + SCOPE_HELP + ".")
PROVIDER_SCOPE = typer.Option(None, "--provider", "-p", help="A provider's limit" + SCOPE_HELP + ".")
MODEL_SCOPE = typer.Option(None, "--model", "-m", help="An external model's limit" + SCOPE_HELP + ".")


def _scope(user: str | None, provider: str | None, model: str | None) -> tuple[str, str | None, str]:
    """(scope, name, the flags that say it) from --user/--provider/--model; global when none is given."""
    given = [(s, f"--{s}", v) for s, v in (("user", user), ("provider", provider), ("model", model)) if v is not None]
    if len(given) > 1:
        fail(
            f"give at most one of --user, --provider and --model (got {', '.join(g[1] for g in given)})",
            "each limit has one scope; run the command once per scope",
            EXIT_USAGE,
        )
    if not given:
        return "global", None, ""
    scope, flag, name = given[0]
    name = name.strip()
    if not name:
        fail(f"{flag} needs a name", f"e.g. {flag} alice, or {flag} '*' for each {scope} separately", EXIT_USAGE)
    return scope, name, f" {flag} {name if name != '*' else repr(name)}"


def _scope_label(scope: str, name: str | None, period: str) -> str:
    if scope == "global":
        return f"global {PERIOD_WORD[period]}"
    return f"{'each ' + scope if name == '*' else f'{scope} {name}'} {PERIOD_WORD[period]}"


def _bar(percent: float, thresholds: list[int], width: int = 10) -> str:
    filled = max(0, min(width, math.floor(percent / 100 * width + 1e-9)))
    top = max(thresholds) if thresholds else 100
    low = min(thresholds) if thresholds else 100
    colour = "red" if percent >= min(top, 100) else "yellow" if percent >= low else "green"
    return f"[{colour}]{'█' * filled}{'░' * (width - filled)}[/] {percent:.0f}%"


def _resets(ts: float | None, now: float) -> str:
    """Local time: 00:00 (in 8h17m) within a day, else 2026-12-01 00:00."""
    if ts is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ts)
    if ts - now < 86_400:
        return f"{moment:%H:%M} (in {fmt_duration(max(0.0, ts - now))})"
    return f"{moment:%Y-%m-%d %H:%M}"


def _matching(data: dict[str, Any], scope: str, name: str | None, period: str) -> list[dict[str, Any]]:
    return [
        r
        for r in data.get("limits") or []
        if r["scope"] == scope and (scope == "global" or r.get("name") == name) and r["period"] == period
    ]


@budget_app.command("show")
@handle_errors
def show(json_out: bool = JSON) -> None:
    """Spending limits: spent, reserved, left, how much is used, when each resets.

    Reserved is what calls in flight may still cost. Also the thresholds and what happens at each, and recent
    alerts.

    Example: tiqo budget show
    """
    with client() as c:
        data = c.budget()
    if json_out:
        print_json(data)
        return
    now = time.time()
    thresholds: list[int] = list(data.get("thresholds") or [])
    actions: dict[str, str] = data.get("actions") or {}
    steps = ", ".join(f"{t}% {actions.get(str(t), 'warn')}" for t in thresholds)
    console.print(f"[dim]thresholds: {escape(steps + ', ' if steps else '')}100% no external calls[/]")
    console.print(f"[dim]days and months in {escape(str(data.get('timezone')))}; local models are never limited[/]")
    if data.get("error"):
        console.print(f"[red]{escape(str(data['error']))}[/]", soft_wrap=True)
        console.print("[dim]fix [budgets] in config.toml (`tiqo config path` shows where it is)[/]")
    rows: list[dict[str, Any]] = data.get("limits") or []
    if not rows:
        console.print("no budgets: external models may spend without a limit")
        console.print(
            "[dim]set one with `tiqo budget set --daily 5` (or per user, provider or model: --user NAME, "
            "--provider NAME, --model NAME)[/]"
        )
    else:
        table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column("LIMIT", overflow="fold")
        table.add_column("BUDGET", justify="right", no_wrap=True)
        table.add_column("SPENT", justify="right", no_wrap=True)
        table.add_column("RESERVED", justify="right", no_wrap=True)
        table.add_column("LEFT", justify="right", no_wrap=True)
        table.add_column("USED", no_wrap=True)
        table.add_column("RESETS", overflow="fold")
        for r in rows:
            table.add_row(
                escape(limit_label(r)),
                usd(r["limit_usd"]),
                usd(r["spent_usd"]),
                usd(r["reserved_usd"]),
                usd(r["left_usd"]),
                _bar(float(r["percent"]), thresholds),
                _resets(r.get("resets_at"), now),
            )
        console.print(table)
    if data.get("reserved_usd"):
        console.print(f"reserved by calls in flight: {usd(data['reserved_usd'])}")
    recent: list[dict[str, Any]] = (data.get("alerts") or [])[:5]
    if recent:
        console.print("recent alerts (`tiqo alerts` lists more):")
        for a in reversed(recent):
            console.print(
                f"  {clock(a.get('ts'), now)} {level_markup(str(a.get('level')))} {escape(str(a.get('message')))}"
            )


def _finite(flag: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        fail(f"{flag} must be a number of USD, not {value}", f"e.g. {flag} 5 (0 allows no external calls)", EXIT_USAGE)


@budget_app.command("set")
@handle_errors
def set_budget(
    user: Optional[str] = USER_SCOPE,
    provider: Optional[str] = PROVIDER_SCOPE,
    model: Optional[str] = MODEL_SCOPE,
    daily: Optional[float] = typer.Option(None, "--daily", min=0.0, help="USD per calendar day."),
    monthly: Optional[float] = typer.Option(None, "--monthly", min=0.0, help="USD per calendar month."),
    json_out: bool = JSON,
) -> None:
    """Set a spending limit on external models, global or per user, provider or model.

    Global without a scope option; the name * means each user, provider or model separately. Written to
    config.toml and applied at once; 0 allows no external call.

    Examples:

      tiqo budget set --daily 5 --monthly 100

      tiqo budget set --user alice --daily 1

      tiqo budget set --user '*' --daily 0.5
    """
    scope, name, flags = _scope(user, provider, model)
    if daily is None and monthly is None:
        fail("give --daily USD, --monthly USD or both", f"e.g. tiqo budget set{flags} --daily 5", EXIT_USAGE)
    _finite("--daily", daily)
    _finite("--monthly", monthly)
    changes = [(period, amount) for period, amount in (("day", daily), ("month", monthly)) if amount is not None]
    with client() as c:
        for period, amount in changes:
            result = c.set_budget(scope, name, period, amount)
    if json_out:
        print_json(result)
        return
    now = time.time()
    for period, amount in changes:
        console.print(f"{_scope_label(scope, name, period)} budget set to {usd(amount)}")
        for r in _matching(result, scope, name, period):
            if r.get("counter", "").endswith(":*"):
                continue
            console.print(
                f"  {escape(limit_label(r))}: {usd(r['spent_usd'])} spent, {usd(r['left_usd'])} left, "
                f"resets {_resets(r.get('resets_at'), now)}",
                soft_wrap=True,
            )
    if result.get("error"):
        console.print(f"[red]{escape(str(result['error']))}[/]", soft_wrap=True)


@budget_app.command("rm")
@handle_errors
def rm_budget(
    user: Optional[str] = USER_SCOPE,
    provider: Optional[str] = PROVIDER_SCOPE,
    model: Optional[str] = MODEL_SCOPE,
    daily: bool = typer.Option(False, "--daily", help="Remove the daily limit."),
    monthly: bool = typer.Option(False, "--monthly", help="Remove the monthly limit."),
    json_out: bool = JSON,
) -> None:
    """Remove a spending limit: daily, monthly, or both.

    Both when neither --daily nor --monthly is given; global when no scope option is given. Removed from
    config.toml too.

    Examples:

      tiqo budget rm --user alice

      tiqo budget rm --daily
    """
    scope, name, _ = _scope(user, provider, model)
    periods = [p for p, wanted in (("day", daily), ("month", monthly)) if wanted] or ["day", "month"]
    with client() as c:
        current = c.budget()
        # when the daemon could not read [budgets] it lists no limits: then remove what was asked, blind
        present = periods if current.get("error") else [p for p in periods if _matching(current, scope, name, p)]
        if not present:
            which = " or ".join(PERIOD_WORD[p] for p in periods)
            what = "global" if scope == "global" else f"{scope} {name}"
            fail(
                f"there is no {which} {what} budget to remove",
                "`tiqo budget show` lists the limits",
            )
        for period in present:
            result = c.set_budget(scope, name, period, None)
    if json_out:
        print_json(result)
        return
    for period in present:
        console.print(f"removed the {_scope_label(scope, name, period)} budget")
    missing = [p for p in periods if p not in present]
    if missing and (daily or monthly):
        console.print(f"[dim](there was no {' or '.join(PERIOD_WORD[p] for p in missing)} one)[/]")
