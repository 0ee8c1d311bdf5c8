"""``tiqo keys list|add|rm|enable|disable``: API keys of external providers. Secrets are never taken from argv
and never printed: the daemon answers with a redacted form (``sk-…abcd``)."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli import complete
from tiqo.cli.output import EXIT_USAGE, client, console, fail, handle_errors, print_json
from tiqo.present import key_status

app = typer.Typer(help="List, add, remove, enable and disable providers' API keys.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")
PROVIDER = typer.Argument(
    ..., help="Provider the key belongs to (see `tiqo providers list`).", autocompletion=complete.providers
)
KEY_NAME = typer.Argument(..., help="Name of the key (see `tiqo keys list`).", autocompletion=complete.keys)


def _read_secret(provider: str) -> str:
    """From a hidden prompt on a terminal, else from stdin. Never from the command line."""
    if sys.stdin.isatty():
        secret = str(typer.prompt(f"API key for {provider}", hide_input=True, err=True))
    else:
        secret = sys.stdin.read()
    secret = secret.strip()
    if not secret:
        fail(
            "no API key given",
            f"type it at the prompt, or pipe it in: `printenv GROQ_API_KEY | tiqo keys add {provider}`",
            EXIT_USAGE,
        )
    return secret


def _colour(row: dict[str, Any], text: str) -> str:
    colour = {"healthy": "green", "cooling": "yellow", "exhausted": "yellow"}.get(row["status"], "red")
    return f"[{colour}]{escape(text)}[/]"


def _num(n: int | float | None) -> str:
    if n is None:
        return "∞"
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(n) >= div:
            value = n / div
            return (f"{value:.1f}".rstrip("0").rstrip(".")) + suffix
    return str(int(n))


def usage(row: dict[str, Any]) -> str:
    """Today's requests/tokens against rpd/tpd, this minute's against rpm/tpm."""
    lim = row.get("limits") or {}
    day = (
        f"day {_num(row['requests_today'])}/{_num(lim.get('rpd'))} req "
        f"{_num(row['tokens_today'])}/{_num(lim.get('tpd'))} tok"
    )
    minute = (
        f"min {_num(row['requests_minute'])}/{_num(lim.get('rpm'))} req "
        f"{_num(row['tokens_minute'])}/{_num(lim.get('tpm'))} tok"
    )
    return f"{day}\n{minute}"


def _print_key(row: dict[str, Any], verb: str) -> None:
    console.print(
        f"{verb} key {escape(row['provider'])}/{escape(row['name'])} ({escape(row['key'])}): "
        f"{_colour(row, key_status(row))}"
    )


@app.command("list")
@handle_errors
def list_keys(
    provider: Optional[str] = typer.Argument(
        None, help="Only this provider's keys.", autocompletion=complete.providers
    ),
    json_out: bool = JSON,
) -> None:
    """List keys (redacted): status, usage against their limits, and when their quota day resets.

    Usage is today's and this minute's.

    Example: tiqo keys list groq
    """
    with client() as c:
        rows = c.keys(provider)
    if json_out:
        print_json(rows)
        return
    if not rows:
        where = f" for {provider}" if provider else ""
        console.print(f"no keys{where}")
        console.print(
            f"[dim]add one with `tiqo keys add {provider or 'PROVIDER'}` (reads it from stdin or a prompt)[/]"
        )
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    table.add_column("PROVIDER", overflow="fold")
    table.add_column("NAME", overflow="fold")
    table.add_column("KEY", no_wrap=True)
    table.add_column("STATUS", overflow="fold")
    table.add_column("USAGE", no_wrap=True)
    table.add_column("RESET", overflow="fold")
    for r in rows:
        table.add_row(
            escape(r["provider"]),
            escape(r["name"]),
            escape(r["key"]),
            _colour(r, key_status(r, now)),
            usage(r),
            f"{r['reset']} {escape(r['tz'])}",
        )
    console.print(table)
    console.print("[dim]usage: used/limit (∞ = no limit); --json shows every field[/]")


@app.command("add")
@handle_errors
def add(
    provider: str = PROVIDER,
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Name for the key (default: key1, key2, …)."),
    rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Requests per minute this key may make."),
    tpm: Optional[int] = typer.Option(None, "--tpm", min=1, help="Tokens per minute."),
    rpd: Optional[int] = typer.Option(None, "--rpd", min=1, help="Requests per quota day."),
    tpd: Optional[int] = typer.Option(None, "--tpd", min=1, help="Tokens per quota day."),
    reset: Optional[str] = typer.Option(None, "--reset", help="When the quota day starts, HH:MM (default 00:00)."),
    tz: Optional[str] = typer.Option(None, "--tz", help="Time zone of --reset, e.g. UTC or America/Los_Angeles."),
    weight: Optional[float] = typer.Option(None, "--weight", help="Share under --key-strategy weighted."),
    json_out: bool = JSON,
) -> None:
    """Add an API key to a provider.

    The key is read from a hidden prompt, or from stdin when piped; it is never an argument (it would land in your
    shell history) and is stored in keys.toml (mode 0600).

    Examples:

      tiqo keys add groq --rpd 14400 --rpm 30

      printenv GROQ_API_KEY | tiqo keys add groq --name ci --reset 00:00 --tz UTC
    """
    if weight is not None and weight <= 0:
        fail("--weight must be positive", code=EXIT_USAGE)
    secret = _read_secret(provider)
    limits = {"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd, "reset": reset, "tz": tz, "weight": weight}
    with client() as c:
        row = c.add_key(provider, secret, name, **limits)
    del secret
    if json_out:
        print_json(row)
    else:
        _print_key(row, "added")


@app.command("rm")
@handle_errors
def rm(provider: str = PROVIDER, name: str = KEY_NAME) -> None:
    """Remove a key (from keys.toml too). Example: tiqo keys rm groq key1"""
    with client() as c:
        c.remove_key(provider, name)
    console.print(f"removed key {escape(provider)}/{escape(name)}")


@app.command("enable")
@handle_errors
def enable(provider: str = PROVIDER, name: str = KEY_NAME, json_out: bool = JSON) -> None:
    """Use a key again (clears its cooldown and an upstream 'exhausted' mark too).

    Example: tiqo keys enable groq key1
    """
    with client() as c:
        row = c.set_key_enabled(provider, name, True)
    if json_out:
        print_json(row)
    else:
        _print_key(row, "enabled")


@app.command("disable")
@handle_errors
def disable(provider: str = PROVIDER, name: str = KEY_NAME, json_out: bool = JSON) -> None:
    """Stop using a key until `tiqo keys enable`. Example: tiqo keys disable groq key1"""
    with client() as c:
        row = c.set_key_enabled(provider, name, False)
    if json_out:
        print_json(row)
    else:
        _print_key(row, "disabled")
