"""``tiqo models list|add|rm|load|unload`` (local GGUF files and external providers' models) and ``tiqo ps``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tiqo.cli import complete
from tiqo.cli.daemon import ps_table
from tiqo.cli.output import EXIT_USAGE, client, console, fail, handle_errors, print_json
from tiqo.present import fmt_size

app = typer.Typer(help="List, add, remove, load and unload models.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")


@app.command("list")
@handle_errors
def list_models(json_out: bool = JSON) -> None:
    """List models, local and external: name, kind, size, loaded or not, where it comes from; then aliases.

    Example: tiqo models list
    """
    with client() as c:
        catalog = c.model_catalog()
    rows: list[dict[str, Any]] = catalog["models"]
    aliases: dict[str, list[str]] = catalog.get("aliases") or {}
    if json_out:
        print_json(rows)  # a list, as before external models and aliases existed (`--json` users rely on it)
        return
    wide = console.width >= 140  # descriptions only where they fit on one line
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "KIND", "SIZE", "LOADED", "SOURCE"):
        table.add_column(col, overflow="fold")
    if wide:
        table.add_column("DESCRIPTION", no_wrap=True, overflow="ellipsis")
    for r in rows:
        if r.get("provider"):  # external: served by a provider, nothing on disk, nothing to load
            source = r["source"]
            cells = [r["name"], r["kind"], "-", "-", source]
        else:
            source = r["source"] if r["source"] != "local" else r["path"]
            cells = [r["name"] + (" *" if r["default"] else ""), r["kind"], fmt_size(r["size_bytes"])]
            cells += ["yes" if r["loaded"] else "no", source]
        table.add_row(*[escape(str(cell)) for cell in cells], *([escape(r["description"] or "")] if wide else []))
    console.print(table)
    if aliases:
        console.print("aliases:")
        for alias, targets in aliases.items():
            console.print(f"  {escape(alias)} → {escape(', '.join(targets))}", soft_wrap=True)
    console.print(
        "[dim]* default of its kind (llm.default_model, stt.default_model, tts.default_voice); "
        "--json shows every field[/]"
    )


PRICE_MINUTE = typer.Option(None, "--price-minute", min=0.0, help="External speech-to-text: USD per minute of audio.")
PRICE_MCHAR = typer.Option(None, "--price-mchar", min=0.0, help="External text-to-speech: USD per 1M characters.")
PRICE_IMAGE = typer.Option(None, "--price-image", min=0.0, help="External image generation: USD per image.")
CAPABILITY = typer.Option(
    [],
    "--capability",
    help="External: chat, tools, json, vision, stt, tts, embed, image… (repeatable; default chat, tools, json).",
)
PREMIUM = typer.Option(
    False, "--premium", help="External: a premium model, only for tiers with premium = true in [tiers]."
)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Name to use for it, e.g. qwen2.5-7b or gpt-4o."),
    path: Optional[Path] = typer.Argument(
        None, help="A local .gguf file, CTranslate2 Whisper folder or Piper .onnx voice (not with --provider)."
    ),
    provider: Optional[str] = typer.Option(
        None, "--provider", "-p", help="External: the provider that serves it (see `tiqo providers list`)."
    ),
    upstream_model: Optional[str] = typer.Option(
        None, "--upstream-model", help="External: the provider's name for the model (default: NAME)."
    ),
    price_in: Optional[float] = typer.Option(None, "--price-in", min=0.0, help="External: USD per 1M input tokens."),
    price_out: Optional[float] = typer.Option(None, "--price-out", min=0.0, help="External: USD per 1M output tokens."),
    context: Optional[int] = typer.Option(None, "--context", min=1, help="External: context window in tokens."),
    price_minute: Optional[float] = PRICE_MINUTE,
    price_mchar: Optional[float] = PRICE_MCHAR,
    price_image: Optional[float] = PRICE_IMAGE,
    capability: list[str] = CAPABILITY,
    fallback: list[str] = typer.Option([], "--fallback", help="External: model to try next if it fails (repeatable)."),
    premium: bool = PREMIUM,
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Local: context window for this model."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="Local: default keep-alive for this model."),
    description: Optional[str] = typer.Option(None, "--description", "-d"),
    json_out: bool = JSON,
) -> None:
    """Register a local model file or folder, or a model an external provider serves.

    Local models: a GGUF file (checked: magic, header, no truncation), a Whisper folder or a Piper voice.

    Examples:

      tiqo models add qwen2.5-7b ~/models/qwen2.5-7b-instruct-q4_k_m.gguf

      tiqo models add gpt-4o --provider openai --upstream-model gpt-4o --price-in 2.5 --price-out 10 --premium
    """
    _one_source(name, path, provider)
    entry = {
        "provider": provider,
        "upstream_model": upstream_model,
        "price_in": price_in,
        "price_out": price_out,
        "context": context,
        "capabilities": capability or None,
        "fallbacks": fallback or None,
        "premium": premium or None,
        "description": description,
        "price_minute": price_minute,
        "price_mchar": price_mchar,
        "price_image": price_image,
    }
    local = {"n_ctx": n_ctx, "keep_alive": keep_alive}
    if path is not None:
        _refuse(entry, "only apply to external models (with --provider)")
        _add_local(name, path, {**local, "description": description}, json_out)
    else:
        _refuse(local, "only apply to local models (use --context for an external one)")
        _add_external(name, entry, json_out)


# The flags that belong to one side only, in the order an error names them.
_FLAGS = {
    "upstream_model": "--upstream-model",
    "price_in": "--price-in",
    "price_out": "--price-out",
    "context": "--context",
    "price_minute": "--price-minute",
    "price_mchar": "--price-mchar",
    "price_image": "--price-image",
    "capabilities": "--capability",
    "fallbacks": "--fallback",
    "premium": "--premium",
    "n_ctx": "--n-ctx",
    "keep_alive": "--keep-alive",
}


def _one_source(name: str, path: Path | None, provider: str | None) -> None:
    """A model is a local file or a provider's, never both and never neither."""
    if (path is None) == (provider is None):
        fail(
            "give either PATH (a local .gguf file) or --provider (an external model), not both"
            if path is not None
            else "give either PATH (a local .gguf file) or --provider (an external model)",
            f"tiqo models add {name} ~/models/file.gguf, or "
            f"tiqo models add {name} --provider NAME --upstream-model M --price-in X --price-out Y",
            EXIT_USAGE,
        )


def _refuse(given: dict[str, Any], why: str) -> None:
    """Refuse the flags of the other kind of model, naming each one given."""
    wrong = [flag for key, flag in _FLAGS.items() if given.get(key) is not None]
    if wrong:
        fail(f"{', '.join(wrong)} {why}", code=EXIT_USAGE)


def _add_local(name: str, path: Path, options: dict[str, Any], json_out: bool) -> None:
    with client() as c:
        row = c.add_model(name, str(path.expanduser().absolute()), **options)
    if json_out:
        print_json(row)
    else:
        console.print(f"added {row['name']} ({fmt_size(row['size_bytes'])}) from {row['path']}")


def _add_external(name: str, entry: dict[str, Any], json_out: bool) -> None:
    with client() as c:
        row = c.add_model(name, **entry)
    if json_out:
        print_json(row)
        return
    console.print(
        f"added {escape(row['name'])} → {escape(row['provider'])}/{escape(row['upstream_model'])} "
        f"(${row['price_in']:g} in / ${row['price_out']:g} out per 1M tokens)"
        + (", premium" if row.get("premium") else "")
    )
    if (
        not row["price_in"]
        and not row["price_out"]
        and not row.get("price_minute")
        and not any(row.get(k) for k in ("price_minute", "price_mchar", "price_image"))
    ):
        console.print("[dim]no prices given: routing treats it as free; --price-in/--price-out set them[/]")


@app.command("rm")
@handle_errors
def rm(name: str = typer.Argument(..., help="Model to remove.", autocompletion=complete.models)) -> None:
    """Unregister a model you added (the file stays on disk). Example: tiqo models rm qwen2.5-7b"""
    with client() as c:
        c.remove_model(name)
    console.print(f"removed {name}")


@app.command("load")
@handle_errors
def load(
    name: str = typer.Argument(..., help="Model to load.", autocompletion=complete.local_models),
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
def unload(name: str = typer.Argument(..., help="Model to unload.", autocompletion=complete.local_models)) -> None:
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
