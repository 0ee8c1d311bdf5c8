"""``tiqo users list|token|revoke``: users, their tiers and limits, and bearer tokens for the TCP listener."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli.output import client, console, err_console, handle_errors, print_json

app = typer.Typer(help="Users, their tiers and rate limits, and tokens for the TCP listener.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")
NAME = typer.Argument(..., help="User name (letters, digits, '-', '_', '.').")


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


@app.command("list")
@handle_errors
def list_users(json_out: bool = JSON) -> None:
    """Show configured users ([users.NAME] in config.toml) and tiers with their limits.

    Example: tiqo users list
    """
    with client() as c:
        data = c.users()
    if json_out:
        print_json(data)
        return
    table = Table(box=None, pad_edge=False, title="users")
    for col in ("USER", "TIER", "CLASS", "RPM", "TPM", "RPD", "TOKEN"):
        table.add_column(col)
    for u in data["users"]:
        table.add_row(
            escape(u["name"]),
            escape(u["tier"] or (f"{u['tcp_tier']} over TCP" if u["token"] and u.get("tcp_tier") else "-")),
            escape(u["data_class"] or "-"),
            _limit(u["rpm"]),
            _limit(u["tpm"]),
            _limit(u["rpd"]),
            ("scrape" if u.get("role") == "metrics" else "yes") if u["token"] else "-",
        )
    if data["users"]:
        console.print(table)
    else:
        console.print("no [users.NAME] tables in config.toml; every caller gets routing.tier's limits")
    tiers = Table(box=None, pad_edge=False, title="tiers")
    for col in ("TIER", "PROVIDERS", "PREMIUM", "RPM", "TPM", "RPD", "DESCRIPTION"):
        tiers.add_column(col)
    for name, t in data["tiers"].items():
        providers = "all" if t["providers"] is None else ", ".join(t["providers"])
        tiers.add_row(
            escape(name),
            escape(providers),
            "yes" if t["premium"] else "no",
            _limit(t["rpm"]),
            _limit(t["tpm"]),
            _limit(t["rpd"]),
            escape(t["description"]),
        )
    console.print(tiers)
    listen = data.get("listen")
    console.print(f"TCP listener: {escape(listen) if listen else 'off (daemon.listen)'}")


@app.command("token")
@handle_errors
def token(
    name: str = NAME,
    tier: Optional[str] = typer.Option(
        None, "--tier", help="Give NAME this tier too ([users.NAME] tier); without one: daemon.listen_tier."
    ),
    scrape: bool = typer.Option(
        False, "--scrape", help="A scrape token: it reads GET /metrics over TCP and nothing else (for Prometheus)."
    ),
    json_out: bool = JSON,
) -> None:
    """Create a bearer token for NAME on the TCP listener (replaces an old one).

    It is printed once, alone on stdout; only its hash is kept. A user without a tier gets daemon.listen_tier over
    TCP (free: local models only). With --scrape the token reads /metrics and nothing else; without it, it never
    reads /metrics.

    Example: tiqo users token ann --tier pro > ann.token; tiqo users token prometheus --scrape > scrape.token
    """
    with client() as c:
        data = c.create_token(name, tier, scrape)
    if json_out:
        print_json(data)
        return
    print(data["token"])
    if data.get("tier_source") == "daemon.listen_tier":
        err_console.print(
            f"{escape(name)} has no tier: over TCP they get {escape(str(data['tier']))} (daemon.listen_tier); "
            f"give one with `tiqo users token {escape(name)} --tier TIER`"
        )


@app.command("revoke")
@handle_errors
def revoke(name: str = NAME) -> None:
    """Revoke NAME's TCP bearer token.

    Example: tiqo users revoke ann
    """
    with client() as c:
        c.revoke_token(name)
    console.print(f"revoked the token of {escape(name)}")
