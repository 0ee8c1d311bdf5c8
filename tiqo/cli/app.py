"""The typer app behind the ``tiqo`` command.

Every TAB completion and every ``tiqo X`` builds this app, so it imports no command module up front: the root group
knows the commands by name (``tiqo.cli.commands.COMMANDS``, in the order help lists them) and imports a command's
module the first time click asks for it. ``tiqo ask`` then loads ``tiqo.cli.ask`` alone, and the help, man page and
completions are the same as if every command were registered up front. (``tiqo --help`` alone never gets here:
``tiqo.cli.root_help`` prints it from the table.)"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from tiqo import __version__
from tiqo.cli.commands import COMMANDS, NO_AUTOSTART_HELP, ROOT_HELP, VERSION_HELP
from tiqo.cli.output import state


def _build(name: str, rich_markup_mode: Any) -> Any:
    """The click command for ``name``, built the way ``app.command(name)`` / ``app.add_typer(name=name)`` would."""
    command = COMMANDS[name]
    target = getattr(importlib.import_module(command.module), command.attribute)
    holder = typer.Typer()
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
        return typer.main.get_group_from_info(
            holder.registered_groups[0],
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=rich_markup_mode,
            suggest_commands=app.suggest_commands,
        )
    holder.command(name)(target)
    return typer.main.get_command_from_info(
        holder.registered_commands[0],
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=rich_markup_mode,
    )


class LazyCommands(MutableMapping[str, Any]):
    """The root group's ``commands``: every name is known at once, each command is built on first lookup."""

    def __init__(self, rich_markup_mode: Any) -> None:
        self._markup = rich_markup_mode
        self._names = list(COMMANDS)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build(name, self._markup)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


class LazyGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        registered = dict(self.commands)  # none today: every command comes from COMMANDS
        self.commands = LazyCommands(self.rich_markup_mode)
        self.commands.update(registered)

    def list_commands(self, ctx: Any) -> list[str]:
        # Names only (typer's own reads every command): TAB after `tiqo v` loads vec, video and voices, no more.
        return list(self.commands)


app = typer.Typer(
    name="tiqo",
    cls=LazyGroup,
    help=ROOT_HELP,
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
    no_autostart: bool = typer.Option(False, "--no-autostart", help=NO_AUTOSTART_HELP),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help=VERSION_HELP),
) -> None:
    state.no_autostart = no_autostart
