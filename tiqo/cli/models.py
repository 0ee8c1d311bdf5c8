"""``tiqo models list|add|rm|load|unload`` and ``tiqo ps``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tiqo.cli.daemon import ps_table
from tiqo.cli.output import client, console, fmt_size, handle_errors, print_json

app = typer.Typer(help="List, add, remove, load and unload models.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")


@app.command("list")
@handle_errors
def list_models(json_out: bool = JSON) -> None:
    """List models: name, kind, size, where it comes from, loaded or not. Example: tiqo models list"""
    with client() as c:
        rows = c.models()
    if json_out:
        print_json(rows)
        return
    wide = console.width >= 140  # descriptions only where they fit on one line
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "KIND", "SIZE", "LOADED", "SOURCE"):
        table.add_column(col, overflow="fold")
    if wide:
        table.add_column("DESCRIPTION", no_wrap=True, overflow="ellipsis")
    for r in rows:
        source = r["source"] if r["source"] != "local" else r["path"]
        cells = [r["name"] + (" *" if r["default"] else ""), r["kind"], fmt_size(r["size_bytes"])]
        cells += ["yes" if r["loaded"] else "no", source] + ([r["description"] or ""] if wide else [])
        table.add_row(*cells)
    console.print(table)
    console.print("[dim]* default model (llm.default_model); --json shows every field[/]")


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Name to use for it, e.g. qwen2.5-7b."),
    path: Path = typer.Argument(..., help="Path of a local .gguf file."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context window for this model."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="Default keep-alive for this model."),
    description: Optional[str] = typer.Option(None, "--description", "-d"),
    json_out: bool = JSON,
) -> None:
    """Register a local GGUF file (checked: magic, header, no truncation).

    Example: tiqo models add qwen2.5-7b ~/models/qwen2.5-7b-instruct-q4_k_m.gguf
    """
    with client() as c:
        row = c.add_model(
            name, str(path.expanduser().absolute()), n_ctx=n_ctx, keep_alive=keep_alive, description=description
        )
    if json_out:
        print_json(row)
    else:
        console.print(f"added {row['name']} ({fmt_size(row['size_bytes'])}) from {row['path']}")


@app.command("rm")
@handle_errors
def rm(name: str = typer.Argument(..., help="Model to remove.")) -> None:
    """Unregister a model you added (the file stays on disk). Example: tiqo models rm qwen2.5-7b"""
    with client() as c:
        c.remove_model(name)
    console.print(f"removed {name}")


@app.command("load")
@handle_errors
def load(
    name: str = typer.Argument(..., help="Model to load."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="How long to keep it loaded (10m, 1h, -1)."),
    json_out: bool = JSON,
) -> None:
    """Load a model now and keep it warm. Example: tiqo models load smollm2-135m --keep-alive 10m"""
    spinner = console.status(f"loading {name}…") if console.is_terminal else contextlib.nullcontext()
    with client() as c, spinner:
        row = c.load(name, keep_alive)
    if json_out:
        print_json(row)
    else:
        console.print(f"loaded {row['name']} ({fmt_size(row['memory_bytes'])}) in {row['load_seconds']:.2f}s")


@app.command("unload")
@handle_errors
def unload(name: str = typer.Argument(..., help="Model to unload.")) -> None:
    """Unload a model now (after its running requests). Example: tiqo models unload smollm2-135m"""
    with client() as c:
        result = c.unload(name)
    console.print(f"unloaded {name}" if result["unloaded"] else f"{name} was not loaded")


@handle_errors
def ps(json_out: bool = JSON) -> None:
    """Show loaded models: memory, requests in flight, queue, keep-alive expiry. Example: tiqo ps"""
    with client() as c:
        data = c.ps()
    if json_out:
        print_json(data)
        return
    if not data["models"]:
        console.print("no models loaded")
        return
    console.print(ps_table(data["models"]))
