"""Entry point of the ``tiqo`` command."""

from __future__ import annotations

import typer

from tiqo import __version__
from tiqo.cli import (
    ask,
    backup,
    budget,
    config,
    daemon,
    embed,
    gateway_misc,
    jobs,
    keys,
    ledger,
    media,
    models,
    providers,
    route,
    users,
    vec,
    voice,
)
from tiqo.cli.dash import dash as dash_command
from tiqo.cli.doctor import doctor as doctor_command
from tiqo.cli.output import state
from tiqo.core.paths import use_private_umask

app = typer.Typer(
    name="tiqo",
    help="Local-first AI services: warm local models behind one daemon and an OpenAI-compatible API.\n\n"
    'Example: tiqo ask "Name three primary colours."',
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tiqo {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    no_autostart: bool = typer.Option(
        False, "--no-autostart", help="Never start the daemon; fail if it is not running (or TIQO_NO_AUTOSTART=1)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state.no_autostart = no_autostart


app.command("ask")(ask.ask)
app.command("chat")(ask.chat)
app.command("transcribe")(voice.transcribe)
app.command("speak")(voice.speak)
app.command("image")(media.image)
app.command("video")(media.video)
app.command("embed")(embed.embed)
app.add_typer(voice.voices_app, name="voices")
app.add_typer(vec.app, name="vec")
app.add_typer(jobs.app, name="jobs")
app.command("ps")(models.ps)
app.add_typer(daemon.app, name="daemon")
app.add_typer(models.app, name="models")
app.add_typer(config.app, name="config")
app.add_typer(providers.app, name="providers")
app.add_typer(keys.app, name="keys")
app.add_typer(route.app, name="route")
app.command("plugins")(gateway_misc.plugins)
app.add_typer(gateway_misc.cache_app, name="cache")
app.command("usage")(ledger.usage)
app.command("logs")(ledger.logs)
app.command("audit")(ledger.audit)
app.add_typer(budget.budget_app, name="budget")
app.add_typer(users.app, name="users")
app.command("alerts")(ledger.alerts)
app.command("events")(ledger.events)
app.command("dash")(dash_command)
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.command("doctor")(doctor_command)


def main() -> None:
    # Everything tiqo writes (config.toml, the daemon log, chat history, the unit file, the daemon it starts) is
    # private from its first byte; files the user names with -o are created with the user's own umask instead.
    use_private_umask()
    app(prog_name="tiqo")  # the same name (and completion scripts) under `python -m tiqo`
