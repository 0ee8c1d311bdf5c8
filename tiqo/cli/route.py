"""``tiqo route explain``: what routing would do with a prompt, without running it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli.json_files import SCHEMA, response_format
from tiqo.cli.output import EXIT_ERROR, client, console, handle_errors, print_json, prompt_text

app = typer.Typer(help="See how tiqo would route a request (classification, candidates, prices).", no_args_is_help=True)


class DataClass(StrEnum):
    public = "public"
    internal = "internal"
    confidential = "confidential"
    restricted = "restricted"


class Task(StrEnum):
    chat = "chat"
    code = "code"
    reasoning = "reasoning"


def _price(c: dict[str, Any]) -> str:
    if c["provider"] == "local":
        return "free"
    if c["provider"] == "?":
        return "-"
    return f"${c['price_in']:g}/${c['price_out']:g}"


def _cost(c: dict[str, Any]) -> str:
    if c["provider"] in ("local", "?"):
        return "-"
    cost = float(c["est_cost_usd"])
    return "$0" if cost == 0 else f"${cost:.6f}" if cost < 0.01 else f"${cost:.4f}"


def render(result: dict[str, Any]) -> None:
    cls = result["classification"]
    signals = ", ".join(cls.get("signals") or []) or "none"
    console.print(
        f"[bold]task[/] {escape(cls['task'])} · [bold]complexity[/] {escape(cls['complexity'])} · "
        f"[bold]class[/] {escape(cls['data_class'])} · [bold]user[/] {escape(cls['user'])} · "
        f"[bold]tier[/] {escape(cls['tier'])} · [bold]signals[/] {escape(signals)}"
    )
    needs = ", ".join(result.get("needs") or [])
    console.print(
        f"[bold]route[/] {escape(result['source'])} · ~{result['est_prompt_tokens']} prompt tokens + "
        f"{result['max_tokens']} max" + (f" · needs {escape(needs)}" if needs else "")
    )
    table = Table(box=None, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("MODEL", overflow="fold")
    table.add_column("PROVIDER", overflow="fold")
    table.add_column("PRICE", overflow="fold")
    table.add_column("EST COST", justify="right")
    table.add_column("KEPT")
    table.add_column("REASON", overflow="fold", ratio=1)
    for i, c in enumerate(result["candidates"], 1):
        kept = "[green]yes[/]" if c["kept"] else "[red]no[/]"
        model = escape(c["model"])
        if c.get("via") and c["via"] != result["source"]:  # an alias, a fallback, the local fallback
            model += f"\n[dim]{escape(c['via'])}[/]"
        table.add_row(str(i), model, escape(c["provider"]), _price(c), _cost(c), kept, escape(c["reason"]))
    if result["candidates"]:
        console.print(table)
        console.print("[dim]PRICE: USD per 1M tokens in/out · EST COST: prompt estimate + max tokens[/]")
    for provider, replicas in (result.get("replicas") or {}).items():
        console.print(f"endpoints of {escape(provider)} (next: {escape(str(replicas.get('next') or 'none'))}):")
        for e in replicas["endpoints"]:
            state = "[green]healthy[/]" if e["healthy"] else f"[red]out[/] ({escape(str(e['last_error'] or ''))})"
            console.print(
                f"  {escape(e['url'])}  weight {e['weight']:g}  {state}  "
                f"{e['outstanding']} outstanding  {e['served']} served",
                soft_wrap=True,
            )
    if result.get("chosen"):
        console.print(f"→ chosen: [bold green]{escape(result['chosen'])}[/]")
    else:
        console.print("[bold red]no candidate[/] — nothing can serve this request")


@app.command("explain")
@handle_errors
def explain(
    prompt: Optional[list[str]] = typer.Argument(None, help="The prompt. Text piped on stdin goes before it."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model or alias asked for (default: auto)."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Who asks (per-user limits and tiers)."),
    tier: Optional[str] = typer.Option(None, "--tier", help="Tier to route for (see [tiers] in config.toml)."),
    data_class: Optional[DataClass] = typer.Option(
        None, "--class", help="Data class (default: classified from the text); restricted never leaves the machine."
    ),
    task: Optional[Task] = typer.Option(None, "--task", help="Force the task instead of guessing it."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens to generate."),
    schema: Optional[Path] = SCHEMA,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show how a prompt would be routed, without sending it to any model.

    Prints its classification, every candidate model with its price and why it is kept or dropped, and the choice.
    Exit code 1 when no candidate is left.

    Examples:

      tiqo route explain "Write a python function that reverses a list"

      tiqo route explain --class restricted -m gpt-4o "Summarise the patient file"
    """
    text = prompt_text(prompt, 'tiqo route explain "..."')
    body: dict[str, Any] = {"prompt": text}
    for key, value in (
        ("model", model),
        ("user", user),
        ("tier", tier),
        ("class", data_class.value if data_class else None),
        ("task", task.value if task else None),
        ("max_tokens", max_tokens),
        ("response_format", response_format(schema) if schema is not None else None),
    ):
        if value is not None:
            body[key] = value
    with client() as c:
        result = c.route_explain(body)
    if json_out:
        print_json(result)
    else:
        render(result)
    if not result.get("chosen"):
        raise typer.Exit(EXIT_ERROR)
