"""``tiqo --help`` (and bare ``tiqo``) printed from the command table, without importing typer.

The root help is the first screen a new user sees. Built by typer it took 0.26 s here: typer itself, its rich help
module (which also loads rich's Markdown and Traceback), and every command module, for its summary; from the table it
takes 0.10 s (``bench/cli_startup.py``). This module draws the same panels with rich alone, from ``tiqo.cli.commands``:
the same console settings, theme, highlighters, tables and panels as typer's ``rich_utils.rich_format_help``, so the
bytes are the same (``tests/test_root_help.py`` compares the two at several widths, with and without colour). Anything
else on the command line, and shell completion, goes to typer."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from tiqo.cli.commands import COMMANDS, NO_AUTOSTART_HELP, ROOT_HELP, VERSION_HELP

if TYPE_CHECKING:  # rich loads only when the help is printed
    from rich.console import Console
    from rich.highlighter import Highlighter
    from rich.theme import Theme

USAGE = "Usage: tiqo [OPTIONS] COMMAND [ARGS]..."
# (long, short, help) in click's order: the root callback's options, typer's completion options, then --help.
OPTIONS = (
    ("--no-autostart", "", NO_AUTOSTART_HELP),
    ("--version", "", VERSION_HELP),
    ("--install-completion", "", "Install completion for the current shell."),
    ("--show-completion", "", "Show completion for the current shell, to copy it or customize the installation."),
    ("--help", "-h", "Show this message and exit."),
)
# typer's styles (typer.rich_utils): theme names for the highlighters, then the panels' own.
THEME = {
    "option": "bold cyan",
    "switch": "bold green",
    "negative_option": "bold magenta",
    "negative_switch": "bold red",
    "types": "bold yellow",
    "types_sep": "dim",
    "usage": "yellow",
}
TABLE_STYLE: dict[str, Any] = {
    "show_header": False,
    "expand": True,
    "box": None,
    "show_lines": False,
    "leading": 0,
    "border_style": None,
    "row_styles": None,
    "pad_edge": False,
    "padding": (0, 1),
}


def exit_code(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """The exit code of printing the root help, when that is all ``argv`` asks for; None for anything else."""
    if "_TIQO_COMPLETE" in environ:  # shell completion is click's
        return None
    if not argv:
        return 2  # a bare `tiqo` prints the help as a usage error, as click's no_args_is_help does
    if list(argv) in (["--help"], ["-h"]):
        return 0
    return None


def print_root_help(*, trailing_newline: bool) -> None:
    """Print the root help to stdout exactly as typer would (``--help`` adds click's empty echo: one more newline)."""
    from rich.align import Align
    from rich.columns import Columns
    from rich.console import Group
    from rich.highlighter import RegexHighlighter
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from rich.theme import Theme

    class OptionHighlighter(RegexHighlighter):
        highlights: ClassVar[list[str]] = [
            r"(^|\W)(?P<switch>\-\w+)(?![a-zA-Z0-9])",
            r"(^|\W)(?P<option>\-\-[\w\-]+)(?![a-zA-Z0-9])",
            r"(?P<types>\<[^\>]+\>)",
            r"(?P<usage>Usage: )",
        ]

    class NegativeOptionHighlighter(RegexHighlighter):
        highlights: ClassVar[list[str]] = [
            r"(^|\W)(?P<negative_switch>\-\w+)(?![a-zA-Z0-9])",
            r"(^|\W)(?P<negative_option>\-\-[\w\-]+)(?![a-zA-Z0-9])",
        ]

    class TypesHighlighter(RegexHighlighter):
        highlights: ClassVar[list[str]] = [
            r"^(?P<types_sep>(\[|<))",
            r"(?P<types_sep>\|)",
            r"(?P<types_sep>(\]|>))(\.\.\.)?$",
        ]

    highlight, negative, types = OptionHighlighter(), NegativeOptionHighlighter(), TypesHighlighter()

    def markup(text: str, style: str = "") -> Text:
        return highlight(Text.from_markup(text, style=style))

    console = _console(Theme(THEME), highlight)
    console.print(Padding(highlight(USAGE), 1), style="bold")
    first, _, rest = ROOT_HELP.partition("\n\n")
    about = [markup(first.replace("\n", " ").strip()), *([Text(""), markup(rest, "dim")] if rest else [])]
    console.print(Padding(Align(Group(*about), pad=False), (0, 1, 1, 1)))

    options = Table(highlight=True, **TABLE_STYLE)
    for long, short, text in OPTIONS:
        no_type = types(Text(style="bold yellow", overflow="fold"))
        options.add_row(highlight(long), highlight(short), negative(""), negative(""), no_type, Columns([markup(text)]))
    console.print(Panel(options, border_style="dim", title="Options", title_align="left"))

    commands = Table(highlight=False, **TABLE_STYLE)
    commands.add_column(style="bold cyan", no_wrap=True, width=max(len(name) for name in COMMANDS))
    commands.add_column("Description", justify="left", no_wrap=False, ratio=10)
    for name, command in COMMANDS.items():
        commands.add_row(Text(name), markup(command.summary))
    console.print(Panel(commands, border_style="dim", title="Commands", title_align="left"))
    if trailing_newline:
        console.file.write("\n")
    console.file.flush()


def _console(theme: Theme, highlighter: Highlighter) -> Console:
    """A console set up as typer sets up its own (the same environment variables choose width and colour)."""
    from rich.console import Console

    width = os.environ.get("TERMINAL_WIDTH")
    force = True if any(os.environ.get(v) for v in ("GITHUB_ACTIONS", "FORCE_COLOR", "PY_COLORS")) else None
    if os.environ.get("_TYPER_FORCE_DISABLE_TERMINAL"):
        force = False
    return Console(
        theme=theme,
        highlighter=highlighter,
        color_system="auto",
        force_terminal=force,
        width=int(width) if width else None,
    )
