"""`tiqo --help` is printed from the command table without typer; it must stay byte for byte what typer prints."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, home_env, short_home
from tiqo.cli.commands import COMMANDS
from tiqo.cli.root_help import exit_code

TYPER = "from tiqo.cli.app import app; app(prog_name='tiqo')"  # the same root help, built by typer
ENVS = {
    "plain 80": {"COLUMNS": "80"},
    "plain 44": {"COLUMNS": "44"},
    "colour 120": {"COLUMNS": "120", "FORCE_COLOR": "1"},
    "colour, TERMINAL_WIDTH 70": {"TERMINAL_WIDTH": "70", "FORCE_COLOR": "1"},
    "NO_COLOR wins": {"COLUMNS": "100", "FORCE_COLOR": "1", "NO_COLOR": "1"},
}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name", list(ENVS))
@pytest.mark.parametrize("args", [["--help"], ["-h"], []], ids=["--help", "-h", "bare"])
def test_root_help_is_typers_byte_for_byte(name: str, args: list[str]) -> None:
    home = short_home()
    try:
        env = {k: v for k, v in home_env(home).items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
        env.update(TERM="xterm-256color", **ENVS[name])
        ours = _run([sys.executable, "-m", "tiqo", *args], env)
        typers = _run([sys.executable, "-c", TYPER, *args], env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert b"Usage: " in ours.stdout and b"transcribe" in ours.stdout
    assert (ours.returncode, ours.stderr) == (typers.returncode, typers.stderr)
    assert ours.stdout.decode() == typers.stdout.decode()
    assert ours.returncode == (2 if not args else 0)
    width = int(env.get("TERMINAL_WIDTH") or env["COLUMNS"])
    text = re.sub(r"\x1b\[[0-9;]*m", "", ours.stdout.decode())
    assert max(len(line) for line in text.splitlines()) == width  # the width asked for, and the panels span it
    assert f"╭─ Options {'─' * (width - 12)}╮" in text
    if "FORCE_COLOR" in env and "NO_COLOR" not in env:
        assert b"\x1b[" in ours.stdout  # the colour case really has colour


def test_version_is_typers_without_typer() -> None:
    home = short_home()
    try:
        ours = _run([sys.executable, "-m", "tiqo", "--version"], home_env(home))
        typers = _run([sys.executable, "-c", TYPER, "--version"], home_env(home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert ours.returncode == typers.returncode == 0
    assert ours.stdout == typers.stdout and ours.stdout.startswith(b"tiqo ")


def test_every_summary_is_its_commands_first_paragraph_on_one_line() -> None:
    from tiqo.cli.app import _build

    for name, command in COMMANDS.items():
        built = _build(name, "rich")
        first = inspect.cleandoc(built.short_help or built.help or "").split("\n\n")[0].strip()
        assert command.summary == first, f"tiqo/cli/commands.py: COMMANDS[{name!r}].summary should be {first!r}"
        assert "\n" not in first, f"the help of `tiqo {name}`: make its first paragraph one line (a summary)"
        assert not built.hidden and not built.deprecated  # (panels and the rest: the byte-for-byte test above)


def test_every_subcommand_summary_is_one_line() -> None:
    """A group's help lists its commands' first paragraphs as they are written: a line break there shows as a ragged
    line in `tiqo GROUP --help` (typer's rich mode keeps it)."""
    import typer.main

    from tiqo.cli.app import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    ragged, seen = [], 0
    groups: list[tuple[str, Any]] = [("tiqo", root)]  # (typer's own click: a group has list_commands)
    while groups:
        path, group = groups.pop()
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            seen += 1
            first = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
            if "\n" in first.strip():
                ragged.append(f"{path} {name}")
            if hasattr(command, "list_commands"):
                groups.append((f"{path} {name}", command))
    assert seen > len(COMMANDS)  # the groups' commands were walked too
    assert ragged == [], f"make the first paragraph of these commands' help one line: {ragged}"


def test_only_a_bare_help_is_printed_from_the_table() -> None:
    assert exit_code([], {}) == 2
    assert exit_code(["--help"], {}) == exit_code(["-h"], {}) == 0
    for argv in (["ask", "--help"], ["--version"], ["--no-autostart", "--help"], ["--help", "ask"], ["ps"]):
        assert exit_code(argv, {}) is None, argv
    assert exit_code([], {"_TIQO_COMPLETE": "complete_bash"}) is None  # completion is click's
    assert exit_code(["--help"], {**os.environ, "_TIQO_COMPLETE": "source_zsh"}) is None
