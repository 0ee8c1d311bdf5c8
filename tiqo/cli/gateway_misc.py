"""``tiqo plugins`` and ``tiqo cache stats|clear``."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli.output import client, console, handle_errors, print_json
from tiqo.present import fmt_duration, fmt_size

JSON = typer.Option(False, "--json", help="Print JSON.")
cache_app = typer.Typer(help="Look at and empty the response cache.", no_args_is_help=True)


@handle_errors
def plugins(json_out: bool = JSON) -> None:
    """Show loaded plugins and what each provides (engines, provider kinds), and plugins that failed to load.

    Example: tiqo plugins
    """
    with client() as c:
        report = c.plugins()
    if json_out:
        print_json(report)
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("PLUGIN", overflow="fold")
    table.add_column("STATUS")
    table.add_column("PROVIDES", overflow="fold", ratio=1)
    for p in report.get("loaded", []):
        table.add_row(escape(p["name"]), "[green]loaded[/]", escape(", ".join(p.get("provides") or []) or "-"))
    for p in report.get("failed", []):
        table.add_row(escape(p["name"]), "[red]failed[/]", f"[red]{escape(p['error'])}[/]")
    console.print(table)
    console.print(f"engines: {escape(', '.join(report.get('engines') or []) or 'none')}")
    console.print(f"provider kinds: {escape(', '.join(report.get('provider_kinds') or []) or 'none')}")
    if report.get("failed"):
        console.print("[dim]a failed plugin is skipped; see `tiqo daemon logs` for details[/]")


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


@cache_app.command("stats")
@handle_errors
def stats(json_out: bool = JSON) -> None:
    """Entries, size, hits, misses and hit rate of the response cache.

    Hits are split into exact and semantic; the mode, TTL and semantic setting follow, then the entries per scope.

    Example: tiqo cache stats
    """
    with client() as c:
        data = c.cache_stats()
    if json_out:
        print_json(data)
        return
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    expired = f" (+{data['expired']} expired)" if data.get("expired") else ""
    table.add_row("entries", f"{data['entries']}{expired}")
    table.add_row("size", fmt_size(data.get("bytes") or 0))
    table.add_row("hits", f"{data['hits']} exact, {data.get('semantic_hits', 0)} semantic")
    table.add_row("misses", str(data["misses"]))
    table.add_row("hit rate", _rate(data.get("hit_rate")))
    table.add_row("mode", escape(str(data.get("mode"))))
    semantic = f"on, similarity ≥ {data.get('semantic_threshold')}" if data.get("semantic") else "off"
    table.add_row("semantic", semantic)
    ttl = data.get("ttl_s")
    table.add_row("ttl", fmt_duration(float(ttl)) if isinstance(ttl, (int, float)) else escape(str(ttl)))
    shared = {"user": "per user", "all": "shared within a data class (restricted: per user)"}
    table.add_row("sharing", escape(shared.get(str(data.get("scope")), str(data.get("scope")))))
    scopes = data.get("scopes") or {}
    table.add_row("scopes", escape(", ".join(f"{k} {v}" for k, v in sorted(scopes.items()))) or "-")
    console.print(table)


@cache_app.command("clear")
@handle_errors
def clear(
    expired: bool = typer.Option(False, "--expired", help="Only remove entries past their TTL."),
    json_out: bool = JSON,
) -> None:
    """Empty the response cache (and its hit/miss counters), or only its expired entries.

    Example: tiqo cache clear --expired
    """
    with client() as c:
        result = c.cache_clear(expired)
    if json_out:
        print_json(result)
        return
    what = "expired " if expired else ""
    n = int(result.get("removed", 0))
    console.print(f"removed {n} {what}cache entr{'y' if n == 1 else 'ies'}")
