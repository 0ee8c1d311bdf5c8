"""Renders man/tiqo.1 from the CLI tree and the settings table (``python -m tiqo.cli.manpage > man/tiqo.1``)."""

from __future__ import annotations

from typing import Any

import typer.main

from tiqo import __version__
from tiqo.core.settings import SETTINGS


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-").replace("\n.", "\n\\&.")


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            rows.extend(_commands(command, f"{prefix} {name}"))
        else:
            rows.append((f"{prefix} {name}", command))
    return rows


def render() -> str:
    from tiqo.cli.app import app

    root = typer.main.get_command(app)
    out = [
        f'.TH TIQO 1 "" "tiqo {__version__}" "User Commands"',
        ".SH NAME",
        "tiqo \\- local\\-first AI services: warm local models behind one daemon and an OpenAI\\-compatible API",
        ".SH SYNOPSIS",
        ".B tiqo",
        "[\\-\\-no\\-autostart] COMMAND [ARGS]...",
        ".SH DESCRIPTION",
        _esc(
            "The tiqo command is a thin client of the tiqo daemon, which it starts on first use. The daemon keeps "
            "models warm and serves an OpenAI-compatible API on a Unix socket."
        ),
        ".SH COMMANDS",
    ]
    for path, command in _commands(root, "tiqo"):
        out.append(".TP")
        params = " ".join((p.name or "").upper() for p in command.params if p.param_type_name == "argument")
        out.append(f".B {_esc(path)}" + (f" {_esc(params)}" if params else ""))
        out.append(_esc((command.help or "").split("\n\n")[0].strip()))
    out += [".SH ENVIRONMENT", ".TP", ".B TIQO_HOME", "Put config, state, cache, runtime and logs under one folder."]
    out += [".TP", ".B TIQO_NO_AUTOSTART", "Set to 1 to never start the daemon from the CLI."]
    for s in SETTINGS:
        out += [".TP", f".B {s.env}", _esc(f"{s.doc} (setting {s.key}, default {s.default})")]
    out += [
        ".SH FILES",
        ".TP",
        ".I config.toml",
        "Settings and the [models.NAME] catalog; see \\fBtiqo config path\\fR. Mode 0600, like every file tiqo "
        "writes (its folders are 0700); files you name with \\-o keep your umask.",
        ".TP",
        ".I daemon.env",
        "The variables of the systemd unit that hold secrets (mode 0600, next to config.toml); see "
        "\\fBtiqo daemon install\\fR.",
        ".TP",
        ".I tiqo.sock",
        "The daemon's Unix socket (mode 0600) in the runtime folder.",
        ".TP",
        ".I daemon.json",
        "Pid, version and socket of the running daemon.",
        ".TP",
        ".I daemon.log",
        "The daemon log; see \\fBtiqo daemon logs\\fR.",
        ".SH EXIT STATUS",
        "0 ok; 1 the request failed; 2 bad arguments or settings; 3 the daemon is not running; 130 interrupted.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
