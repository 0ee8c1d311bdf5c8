"""The systemd user units of ``tiqo daemon install|uninstall``: the daemon's unit (this Python, the TIQO_* variables
of this shell, secrets in a 0600 EnvironmentFile), the backup timer beside it, and ``systemctl --user``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tiqo.cli.backup import BACKUP_TIMER, BACKUP_UNIT, timer_units
from tiqo.cli.output import console

UNIT = "tiqo.service"


def say(*args: Any) -> None:
    console.print(*args, soft_wrap=True)  # paths and commands stay on one line, to be copied


def unit_path() -> Path:
    """$XDG_CONFIG_HOME/systemd/user/tiqo.service (~/.config by default), where `systemctl --user` looks."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT


def _quote(value: str) -> str:
    """A value for a unit file line: quoted for systemd's parser, with % (specifiers) and \\ escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def unit_env() -> tuple[dict[str, str], dict[str, str]]:
    """The TIQO_* variables of this shell (and PATH) for the unit: (plain ones, ones that hold a secret). Secrets (a
    Redis password, a webhook URL, anything named *_TOKEN, *_KEY, ... or holding a URL password or an auth header)
    go to a 0600 EnvironmentFile, never into the unit."""
    from tiqo.core.redact import holds_secret
    from tiqo.core.settings import SETTINGS

    secret_vars = {s.env for s in SETTINGS if s.secret}
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for k, v in sorted(os.environ.items()):
        if k.startswith("TIQO_") and k != "TIQO_NO_AUTOSTART":
            (secret if k in secret_vars or holds_secret(k, v) else plain)[k] = v
    plain["PATH"] = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")  # ffmpeg, espeak-ng … as this shell finds
    return plain, secret


def env_file_path(settings: Any) -> Path:
    """Where the unit's secret variables live (mode 0600), next to config.toml."""
    return Path(settings.paths.config_dir) / "daemon.env"


def env_file_text(secret: dict[str, str]) -> str:
    """KEY="value" lines for systemd's EnvironmentFile= (double quotes: \\ " ` $ escaped, as in a POSIX shell)."""
    lines = ["# Written by `tiqo daemon install` (mode 0600): the variables of tiqo.service that hold secrets."]
    for key, value in secret.items():
        escaped = "".join("\\" + c if c in '\\"`$' else c for c in value)
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def environment_lines(settings: Any) -> list[str]:
    """The TIQO_* variables of this shell for a unit, so that the CLI and the service agree on every folder; those
    that hold secrets are read from ``env_file_path`` (see ``unit_env``)."""
    env, secret = unit_env()
    # not quoted: systemd takes the rest of the line as the path, expanding % specifiers
    env_file = str(env_file_path(settings)).replace("%", "%%")
    return [
        *(f"Environment={_quote(f'{k}={v}')}" for k, v in env.items()),
        *([f"EnvironmentFile={env_file}"] if secret else []),
    ]


def exec_arg(value: str) -> str:
    """One argument of an ExecStart line: quoted, with $ (variables) escaped too."""
    return _quote(value).replace("$", "$$")


def unit_text(settings: Any) -> str:
    """The unit: the daemon exactly as the CLI starts it (this Python, `-m tiqo.daemon`, logging to the daemon
    log), with ``environment_lines``."""
    log = str(settings.paths.log_file)
    lines = [
        "# Written by `tiqo daemon install`; `tiqo daemon uninstall` removes it.",
        "[Unit]",
        "Description=tiqo daemon: local AI models behind an OpenAI-compatible API on a Unix socket",
        "Documentation=man:tiqo(1)",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_arg(sys.executable)} -m tiqo.daemon",
        *environment_lines(settings),
        "# the daemon log (created by systemd before the daemon runs) and everything else private to this user",
        "UMask=0077",
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        "Restart=on-failure",
        "RestartSec=2",
        "# 2: bad settings, 3: another daemon already runs (started by the CLI): restarting would not help",
        "RestartPreventExitStatus=2 3",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def systemctl(*args: str) -> bool:
    """Run `systemctl --user ARGS`; False (after saying why and what to do) when it is missing or fails."""
    import shutil
    import subprocess

    exe = shutil.which("systemctl")
    if exe is None:
        say(
            "[yellow]systemctl not found[/]: this system does not run systemd; start the daemon at login another "
            "way, e.g. `tiqo daemon start` in your shell profile"
        )
        return False
    done = subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        say(f"[red]`systemctl --user {' '.join(args)}` failed[/]: {why[-1] if why else done.returncode}")
        say("[dim]hint: without a user session bus (containers, ssh without lingering) run "
                      "`loginctl enable-linger $USER`, or start the daemon with `tiqo daemon start`[/]")  # fmt: skip
        return False
    return True


def write_unit(path: Path, text: str) -> None:
    from tiqo.core.paths import tighten, write_private

    existed = path.exists()
    if existed and path.read_text() == text:
        tighten(path)
        say(f"unchanged: {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text)
    say(f"{'updated' if existed else 'wrote'} {path}")


def install_units(settings: Any, now: bool, backup: Path | None, keep: int) -> None:
    """``tiqo daemon install``: write the unit (and the backup timer), then run or print the systemctl step."""
    from tiqo.core.paths import make_private_dirs, write_private

    path = unit_path()
    _plain, secret = unit_env()
    env_file = env_file_path(settings)
    if secret:
        make_private_dirs(env_file.parent)
        write_private(env_file, env_file_text(secret))
        say(f"wrote {env_file} (mode 0600): {', '.join(secret)}")
    elif env_file.exists():
        env_file.unlink()  # no secret variables any more
    make_private_dirs(settings.paths.log_dir)
    write_unit(path, unit_text(settings))
    units = [UNIT]
    if backup is not None:
        folder = exec_arg(str(backup.expanduser().absolute()))
        for name, text in timer_units(folder, keep, exec_arg(sys.executable), environment_lines(settings)).items():
            write_unit(path.with_name(name), text)
        units.append(BACKUP_TIMER)
    from tiqo.client import process

    running = process.read_status(settings)
    if running.alive:
        say(
            f"[yellow]note[/]: a daemon started by the CLI runs (pid {running.pid}); the service cannot start "
            "beside it: `tiqo daemon stop` first"
        )
    if not now:
        say(f"next: systemctl --user daemon-reload && systemctl --user enable --now {' '.join(units)}")
        return
    if not (systemctl("daemon-reload") and systemctl("enable", "--now", *units)):
        raise typer.Exit(1)
    say("enabled and started: the daemon now starts at login (`systemctl --user status tiqo`)")


def uninstall_units(now: bool, load_settings: Callable[[], Any]) -> None:
    """``tiqo daemon uninstall``: remove the units and their links; settings are read only once there is an
    installed unit (so a broken config.toml does not stop the removal of the timer)."""
    path = unit_path()
    units = [UNIT] + ([BACKUP_TIMER] if path.with_name(BACKUP_TIMER).exists() else [])
    if now and path.exists() and not systemctl("disable", "--now", *units):
        raise typer.Exit(1)
    for wants, name in (("default.target.wants", UNIT), ("timers.target.wants", BACKUP_TIMER)):
        link = path.parent / wants / name
        if link.is_symlink():
            link.unlink()
    for name in (BACKUP_TIMER, BACKUP_UNIT):
        if path.with_name(name).exists():
            path.with_name(name).unlink()
            say(f"removed {path.with_name(name)}")
    if not path.exists():
        say(f"not installed ({path} does not exist)")
        return
    path.unlink()
    say(f"removed {path}")
    env_file = env_file_path(load_settings())
    if env_file.exists():
        env_file.unlink()
        say(f"removed {env_file}")
    if now:
        systemctl("daemon-reload")
    else:
        say("next: systemctl --user stop tiqo; systemctl --user daemon-reload")
