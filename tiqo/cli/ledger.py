"""``tiqo usage``, ``tiqo logs``, ``tiqo audit``, ``tiqo alerts`` and ``tiqo events``: what the daemon served, what
left the machine and why, and what it cost. ``tiqo budget`` is in budget.py."""

from __future__ import annotations

import enum
import json
import sys
import time
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli.output import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    client,
    console,
    err_console,
    fail,
    handle_errors,
    print_json,
)
from tiqo.present import clock, latency, usd

JSON = typer.Option(False, "--json", help="Print JSON.")


class Group(enum.StrEnum):
    day = "day"
    provider = "provider"
    model = "model"
    user = "user"
    key = "key"
    backend = "backend"
    outcome = "outcome"


# --------------------------------------------------------------------------- formatting
def _count(n: int | float | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def _since(value: str) -> str:
    """Check a --since duration here: a typo is a usage error, not a failed request."""
    from tiqo.core.durations import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        fail(f"--since: {exc}", "use a duration such as 24h, 7d or 30d", EXIT_USAGE)
    return value


def _outcome(row: dict[str, Any]) -> str:
    outcome, error = str(row.get("outcome") or "ok"), row.get("error")
    if outcome == "ok":
        return "[green]ok[/]"
    colour = "yellow" if outcome in ("refused", "cancelled") else "red"
    return f"[{colour}]{escape(outcome + (f': {error}' if error else ''))}[/]"


# --------------------------------------------------------------------------- usage / logs / audit / alerts
@handle_errors
def usage(
    since: str = typer.Option("7d", "--since", "-s", help="How far back to count: 24h, 7d, 30d…"),
    by: Group = typer.Option(Group.day, "--by", "-b", help="One row per day, provider, model, user, key, …"),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's requests."),
    local: bool = typer.Option(False, "--local", help="Only this daemon's own rows (with state.backend = redis)."),
    json_out: bool = JSON,
) -> None:
    """Requests, tokens, cost, cache hits and errors per group, with a total.

    One row per day (calendar days in budget.timezone), provider, model, user, key, backend or outcome: requests,
    tokens in and out, cost, cache hits, errors, calls sent off the machine and average latency.

    With state.backend = redis the sums are cluster-wide: every daemon on that Redis, counted in whole days, by day,
    provider, model or user. --local shows this daemon's own rows (any grouping).

    Examples:

      tiqo usage

      tiqo usage --since 30d --by model

      tiqo usage --by provider --user alice --json
    """
    with client() as c:
        data = c.usage(_since(since), by.value, user, local=local)
    if json_out:
        print_json(data)
        return
    who = f" for user {escape(user)}" if user is not None else ""
    zone = f" (days in {escape(str(data.get('timezone')))})" if by is Group.day else ""
    scope = "cluster-wide: every daemon on the shared Redis, whole days; " if data.get("scope") == "cluster" else ""
    console.print(f"[dim]{scope}since {clock(data['since'])} ({escape(since)}){who}, by {by.value}{zone}[/]")
    rows: list[dict[str, Any]] = data.get("rows") or []
    if not rows:
        console.print("no requests in that time" + (" from that user" if user is not None else ""))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column(by.value.upper(), overflow="fold", no_wrap=by is Group.day)
    for name in ("REQS", "TOK IN", "TOK OUT", "COST", "CACHED", "ERRORS", "EXT", "LATENCY"):
        table.add_column(name, justify="right", no_wrap=True)

    def cells(r: dict[str, Any]) -> list[str]:
        return [
            _count(r["requests"]),
            _count(r["tokens_in"]),
            _count(r["tokens_out"]),
            usd(r["cost_usd"]),
            _count(r["cache_hits"]),
            _count(r["errors"]),
            _count(r["external"]),
            latency(r["avg_latency_ms"]),
        ]

    for r in rows:
        group = r.get("group")
        table.add_row(escape(str(group)) if group not in (None, "") else "[dim](none)[/]", *cells(r))
    table.add_section()
    table.add_row("total", *cells(data["total"]), style="bold")
    console.print(table)
    console.print("[dim]TOK: tokens; CACHED: from the cache; EXT: sent off the machine; LATENCY: average[/]")


@handle_errors
def logs(
    n: int = typer.Option(20, "--lines", "-n", min=1, max=10_000, help="How many requests to show."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's requests."),
    json_out: bool = JSON,
) -> None:
    """The most recent requests, newest last.

    Time, user, model, what served it, tokens, cost, latency, cache and outcome (or error) of each; --json has
    every field, newest first.

    Example: tiqo logs -n 50 --user alice
    """
    with client() as c:
        rows = c.logs(n, user)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no requests yet" + (f" from {escape(user)}" if user is not None else ""))
        return
    now = time.time()
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("TIME", no_wrap=True)
    table.add_column("USER", overflow="fold")
    table.add_column("MODEL", overflow="fold")
    table.add_column("BACKEND", overflow="fold")
    table.add_column("TOKENS", justify="right", no_wrap=True)
    table.add_column("COST", justify="right", no_wrap=True)
    table.add_column("LATENCY", justify="right", no_wrap=True)
    table.add_column("CACHE", no_wrap=True)
    table.add_column("OUTCOME", overflow="fold")
    for r in reversed(rows):
        table.add_row(
            clock(r.get("ts"), now),
            escape(str(r.get("user") or "-")),
            escape(str(r.get("model") or "-")),
            escape(str(r.get("backend") or "-")),
            f"{_count(r.get('tokens_in'))}→{_count(r.get('tokens_out'))}",
            usd(r.get("cost_usd")),
            latency(r.get("latency_ms")),
            escape(str(r.get("cache") or "-")),
            _outcome(r),
        )
    console.print(table)
    console.print("[dim]TOKENS: prompt→answer; --json shows every field[/]")


_CALL_COLOURS = {"ok": "green", "pending": "yellow", "reserving": "yellow"}


@handle_errors
def audit(
    n: int = typer.Option(20, "--lines", "-n", min=1, max=10_000, help="How many calls to show."),
    since: str = typer.Option("30d", "--since", "-s", help="How far back: 24h, 7d, 30d…"),
    json_out: bool = JSON,
) -> None:
    """Every call that left the machine, and why it was allowed, newest last.

    When, for whom, which provider, model and key, the data class, the reason policy allowed it, its status and
    cost. Local answers never appear here.

    Example: tiqo audit --since 7d -n 100
    """
    with client() as c:
        rows = c.audit(n, _since(since))
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print(f"no off-machine calls in the last {escape(since)}")
        console.print("[dim]every call to an external provider is listed here, with the reason it was allowed[/]")
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    table.add_column("TIME", no_wrap=True)
    table.add_column("USER", overflow="fold")
    table.add_column("MODEL", overflow="fold")
    table.add_column("KEY", overflow="fold")
    table.add_column("CLASS", no_wrap=True)
    table.add_column("STATUS", overflow="fold")
    table.add_column("COST", justify="right", no_wrap=True)
    table.add_column("REASON", overflow="fold", ratio=1)
    for r in reversed(rows):
        status = str(r.get("status") or "-")
        if r.get("error") and status != "ok":
            status += f": {r['error']}"
        colour = _CALL_COLOURS.get(str(r.get("status")), "red")
        pending = r.get("status") in ("pending", "reserving")
        cost = f"≤{usd(r.get('reserved_usd'))}" if pending else usd(r.get("cost_usd"))
        table.add_row(
            clock(r.get("ts"), now),
            escape(str(r.get("user") or "-")),
            escape(f"{r.get('provider')}/{r.get('model')}"),
            escape(str(r.get("key") or "-")),
            escape(str(r.get("class") or "-")),
            f"[{colour}]{escape(status)}[/]",
            cost,
            escape(str(r.get("reason") or "-")),
        )
    console.print(table)
    console.print("[dim]MODEL: provider/model; ≤ marks what a call still in flight has reserved[/]")


_LEVEL_COLOURS = {"critical": "red", "error": "red", "warning": "yellow", "info": "cyan"}


def level_markup(level: str) -> str:
    return f"[{_LEVEL_COLOURS.get(level, 'white')}]{escape(level)}[/]"


@handle_errors
def alerts(
    n: int = typer.Option(20, "--lines", "-n", min=1, max=10_000, help="How many alerts to show."),
    json_out: bool = JSON,
) -> None:
    """Recent alerts, newest last: budget thresholds crossed, and other things the daemon raised.

    Example: tiqo alerts -n 5
    """
    with client() as c:
        rows = c.alerts(n)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no alerts")
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    table.add_column("TIME", no_wrap=True)
    table.add_column("LEVEL", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("MESSAGE", overflow="fold", ratio=1)
    for r in reversed(rows):
        table.add_row(
            clock(r.get("ts"), now),
            level_markup(str(r.get("level"))),
            escape(str(r.get("kind"))),
            escape(str(r["message"])),
        )
    console.print(table)


# --------------------------------------------------------------------------- events
def event_line(event: dict[str, Any], now: float | None = None) -> str:
    """One line of plain text (rich markup escaped) for one event."""
    kind, data = str(event.get("kind")), event.get("data")
    data = data if isinstance(data, dict) else {"data": data}
    when = clock(event.get("ts"), now)
    if kind == "request":
        tail = _outcome(data)
        return (
            f"{when} request {escape(str(data.get('user') or '-'))} {escape(str(data.get('model') or '-'))} "
            f"via {escape(str(data.get('backend') or '-'))} "
            f"{_count(data.get('tokens_in'))}→{_count(data.get('tokens_out'))} tok {usd(data.get('cost_usd'))} "
            f"{latency(data.get('latency_ms'))} cache {escape(str(data.get('cache') or '-'))} {tail}"
        )
    if kind == "alert":
        return f"{when} alert {level_markup(str(data.get('level')))}: {escape(str(data.get('message')))}"
    if kind == "dropped":
        missed = f"{data['count']} events" if "count" in data else f"events {data.get('from')}-{data.get('to')}"
        return f"{when} [yellow]dropped[/]: missed {missed} (too slow, or gone from the daemon's history)"
    return f"{when} {escape(kind)} {escape(json.dumps(data, separators=(',', ':'), ensure_ascii=False))}"


@handle_errors
def events(
    kinds: Optional[str] = typer.Option(
        None, "--kinds", "-k", help="Only these kinds, comma-separated: request, alert, breaker, key, model, budget."
    ),
    after: Optional[int] = typer.Option(
        None, "--after", min=0, help="First replay the events after this id (from the daemon's short history)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print each event as one line of JSON (for pipes)."),
) -> None:
    """Tail the daemon's live events until Ctrl-C, one line each.

    Each request as it finishes, budget alerts, breakers and keys changing state; --json prints each event as
    one line of JSON. A dropped connection is opened again while the daemon is up, resuming after the last event
    seen; when the daemon stops, so does the tail (exit code 3).

    Examples:

      tiqo events

      tiqo events --kinds request,alert --json | jq -c 'select(.kind == "alert")'
    """
    wanted = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    if kinds is not None and not wanted:
        fail("--kinds is empty", "name one or more kinds: --kinds request,alert", EXIT_USAGE)
    if sys.stderr.isatty():
        err_console.print("[dim]waiting for events (Ctrl-C to stop)…[/]")
    try:
        with client() as c:
            stream = c.events(wanted, after)
            try:
                for event in stream:
                    if json_out:
                        sys.stdout.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")
                        sys.stdout.flush()
                    else:
                        console.print(event_line(event), soft_wrap=True)
            finally:
                stream.close()
    except KeyboardInterrupt:  # the way to stop tailing: not an error
        return
    # the client raises DaemonUnavailable when the stream ends for good; this is only a safety net
    fail("the daemon ended the event stream (it is stopping)", "see `tiqo daemon status`", EXIT_UNAVAILABLE)
