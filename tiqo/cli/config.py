"""``tiqo config show|path|set|unset``."""

from __future__ import annotations

import typer
from rich.table import Table

from tiqo.cli.output import EXIT_USAGE, console, fail, handle_errors, print_json

app = typer.Typer(help="Show and change settings (config.toml and TIQO_* variables).", no_args_is_help=True)


@app.command()
@handle_errors
def show(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every setting with its value, where the value comes from, its variable and what it does.

    Passwords and tokens (in the Redis URL, the alert webhook, any URL or auth header) are shown as ***.

    Example: tiqo config show
    """
    from tiqo.core.redact import redact_url, scrub
    from tiqo.core.settings import SETTINGS, Settings

    settings = Settings.load()
    rows = []
    for s in SETTINGS:
        raw, _source = settings.raw(s)
        if isinstance(raw, str):
            raw = redact_url(raw) if s.secret else scrub(raw)
        rows.append({"key": s.key, "value": raw, "source": settings.source(s.key), "env": s.env, "doc": s.doc})
    if json_out:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("KEY", "VALUE", "SOURCE", "ENV", "DESCRIPTION"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["key"], str(r["value"]), r["source"], r["env"], r["doc"])
    console.print(table)
    console.print(f"[dim]config file: {settings.paths.config_file}[/]")


@app.command()
def path() -> None:
    """Print the path of config.toml. Example: $EDITOR $(tiqo config path)"""
    from tiqo.core.paths import Paths

    print(Paths.from_env().config_file)


@app.command("set", context_settings={"ignore_unknown_options": True})  # a value may be negative: `set KEY -1`
@handle_errors
def set_(
    key: str = typer.Argument(..., help="Setting, e.g. scheduler.keep_alive."),
    value: str = typer.Argument(..., help="New value."),
) -> None:
    """Set a setting in config.toml (checked first). Example: tiqo config set scheduler.keep_alive 10m"""
    from tiqo.core.errors import ConfigError
    from tiqo.core.paths import Paths
    from tiqo.core.redact import redact_url, scrub
    from tiqo.core.settings import typed_for_toml, validate, write_config_value

    try:
        setting = validate(key, value)
    except ConfigError as exc:
        fail(exc.message, exc.hint, EXIT_USAGE)
    paths = Paths.from_env()
    write_config_value(paths.config_file, key.split("."), typed_for_toml(setting, value))
    shown = redact_url(value) if setting.secret else scrub(value)
    console.print(f"{key} = {shown}  [dim]({paths.config_file})[/]")
    _restart_note()


@app.command()
@handle_errors
def unset(key: str = typer.Argument(..., help="Setting to reset to its default.")) -> None:
    """Remove a setting from config.toml (back to its default). Example: tiqo config unset llm.n_ctx"""
    from tiqo.core.paths import Paths
    from tiqo.core.settings import BY_KEY, write_config_value

    if key not in BY_KEY:
        fail(f"unknown setting {key!r}", "`tiqo config show` lists every setting", EXIT_USAGE)
    write_config_value(Paths.from_env().config_file, key.split("."), None)
    console.print(f"{key} reset to its default ({BY_KEY[key].default})")
    _restart_note()


def _restart_note() -> None:
    from tiqo.client import process
    from tiqo.core.settings import Settings

    if process.socket_answers(Settings.load().socket_path):
        console.print("[dim]the daemon is running: `tiqo daemon restart` applies the change[/]")
