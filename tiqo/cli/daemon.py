"""``tiqo daemon start|stop|restart|status|logs|run|install|uninstall``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tiqo.cli.backup import BACKUP_TIMER, BACKUP_UNIT, timer_units
from tiqo.cli.output import EXIT_UNAVAILABLE, client, console, fail, handle_errors, print_json
from tiqo.present import fmt_duration, fmt_size

app = typer.Typer(help="Start, stop and inspect the background daemon.", no_args_is_help=True)


def _settings() -> Any:
    from tiqo.core.settings import Settings

    return Settings.load()


@app.command()
@handle_errors
def start() -> None:
    """Start the daemon in the background (a no-op if it runs). Example: tiqo daemon start"""
    from tiqo.client import TiqoClient

    c = TiqoClient(_settings(), autostart=True)
    if c.is_running():
        console.print(f"already running (pid {c.health()['pid']}) on {c.socket_path}")
        return
    pid = c.start_daemon()
    console.print(f"started (pid {pid}) on {c.socket_path}")


def _stop(settings: Any) -> bool:
    """Ask the daemon to stop and wait for its process to end; SIGTERM/SIGKILL if it does not."""
    from tiqo.client import TiqoClient, process

    status = process.read_status(settings)
    c = TiqoClient(settings, autostart=False)
    if not status.alive:
        removed = process.clean_stale(settings)
        if removed:
            console.print(f"[dim]removed stale files of a crashed daemon: {', '.join(removed)}[/]")
        return False
    assert status.pid is not None
    with contextlib.suppress(Exception):  # not answering: fall back to signals below
        c.shutdown()
    if not process.wait_exit(status.pid, 15.0) and not process.terminate(status.pid):
        fail(f"daemon (pid {status.pid}) did not stop", "kill it by hand: kill -9 " + str(status.pid))
    process.clean_stale(settings)
    return True


@app.command()
@handle_errors
def stop() -> None:
    """Stop the daemon (models are unloaded first). Example: tiqo daemon stop"""
    settings = _settings()
    console.print("stopped" if _stop(settings) else "not running")


@app.command()
@handle_errors
def restart() -> None:
    """Stop the daemon if it runs, then start it. Example: tiqo daemon restart"""
    from tiqo.client import TiqoClient

    settings = _settings()
    _stop(settings)
    c = TiqoClient(settings, autostart=True)
    console.print(f"started (pid {c.start_daemon()}) on {c.socket_path}")


@app.command()
@handle_errors
def status(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show pid, version, uptime, socket and loaded models; exit code 3 when not running.

    Example: tiqo daemon status --json
    """
    from tiqo.client import TiqoClient, process

    settings = _settings()
    c = TiqoClient(settings, autostart=False)
    if not c.is_running():
        stale = process.read_status(settings)
        note = f" (stale status file of dead pid {stale.pid})" if stale.pid and not stale.alive else ""
        if json_out:
            print_json({"running": False, "socket": str(c.socket_path)})
            raise typer.Exit(EXIT_UNAVAILABLE)
        fail(f"not running{note}", "start it with `tiqo daemon start` (or just run a command)", EXIT_UNAVAILABLE)
    health, ps = c.health(), c.ps()
    if json_out:
        print_json({"running": True, **health, "ps": ps})
        return
    console.print(f"[bold]tiqo daemon[/] {health['version']} (API {health['api_version']})")
    console.print(f"  pid      {health['pid']}")
    console.print(f"  uptime   {fmt_duration(health['uptime_s'])}")
    console.print(f"  socket   {health['socket']}")
    console.print(f"  log      {settings.paths.log_file}")
    console.print(f"  memory   {fmt_size(ps['memory_used_bytes'])} of {fmt_size(ps['memory_budget_bytes'])} budget")
    if ps["models"]:
        console.print(ps_table(ps["models"]))
    else:
        console.print("  no models loaded")


def ps_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "MEMORY", "PARALLEL", "IN FLIGHT", "QUEUED", "SERVED", "EXPIRES"):
        table.add_column(col)
    for r in rows:
        if r["in_flight"]:
            expires = "busy"
        elif r["keep_alive_s"] is None:
            expires = "never"
        else:
            expires = "in " + fmt_duration(r["expires_in_s"] or 0)
        table.add_row(
            r["name"],
            fmt_size(r["memory_bytes"]),
            str(r["parallel"]),
            str(r["in_flight"]),
            str(r["queued"]),
            str(r["requests_served"]),
            expires,
        )
    return table


@app.command()
def logs(
    lines: int = typer.Option(50, "--lines", "-n", help="How many lines to show."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
) -> None:
    """Show the daemon log. Example: tiqo daemon logs -n 100 -f"""
    from tiqo.client import process

    path = _settings().paths.log_file
    if not path.exists():
        fail(f"no log yet at {path}", "the daemon writes it when started in the background")
    for line in process.tail(path, lines):
        print(line)
    if follow:
        try:
            with path.open() as fh:
                fh.seek(0, os.SEEK_END)
                while True:
                    line = fh.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.25)
        except KeyboardInterrupt:
            pass


@app.command()
def run() -> None:
    """Run the daemon in the foreground, logging to the terminal (Ctrl-C stops it). Example: tiqo daemon run"""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "tiqo.daemon"])


# --------------------------------------------------------------------------- systemd user unit
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


def _systemctl(*args: str) -> bool:
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


def _write_unit(path: Path, text: str) -> None:
    from tiqo.core.paths import tighten, write_private

    existed = path.exists()
    if existed and path.read_text() == text:
        tighten(path)
        say(f"unchanged: {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text)
    say(f"{'updated' if existed else 'wrote'} {path}")


@app.command()
@handle_errors
def install(
    now: bool = typer.Option(False, "--now", help="Also run systemctl: reload, enable and start it now."),
    backup: Path | None = typer.Option(
        None, "--backup", help="Also a daily backup timer writing dated archives into this folder."
    ),
    keep: int = typer.Option(7, "--keep", min=1, help="With --backup: how many archives to keep."),
) -> None:
    """Write a systemd user unit so that the daemon starts at login (~/.config/systemd/user/tiqo.service).

    It runs this Python with `-m tiqo.daemon`, the TIQO_* variables of this shell and the daemon log file. Variables
    that hold secrets (TIQO_REDIS_URL, TIQO_ALERT_WEBHOOK, ...) go to daemon.env next to config.toml (mode 0600),
    never into the unit. The next step is printed (`--now` runs it).

    With --backup DIR, tiqo-backup.service and tiqo-backup.timer run `tiqo backup --keep N DIR` daily.

    Examples:

      tiqo daemon install

      tiqo daemon install --now --backup ~/backups/tiqo --keep 14
    """
    from tiqo.core.paths import make_private_dirs, write_private

    settings = _settings()
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
    _write_unit(path, unit_text(settings))
    units = [UNIT]
    if backup is not None:
        folder = exec_arg(str(backup.expanduser().absolute()))
        for name, text in timer_units(folder, keep, exec_arg(sys.executable), environment_lines(settings)).items():
            _write_unit(path.with_name(name), text)
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
    if not (_systemctl("daemon-reload") and _systemctl("enable", "--now", *units)):
        raise typer.Exit(1)
    say("enabled and started: the daemon now starts at login (`systemctl --user status tiqo`)")


@app.command()
@handle_errors
def uninstall(
    now: bool = typer.Option(False, "--now", help="Also run systemctl: stop and disable it, then reload."),
) -> None:
    """Remove the systemd user units that `tiqo daemon install` wrote (the backup timer too).

    Without --now, the unit files (and their enablement links) are removed and the systemctl step is printed.

    Example: tiqo daemon uninstall --now
    """
    path = unit_path()
    units = [UNIT] + ([BACKUP_TIMER] if path.with_name(BACKUP_TIMER).exists() else [])
    if now and path.exists() and not _systemctl("disable", "--now", *units):
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
    env_file = env_file_path(_settings())
    if env_file.exists():
        env_file.unlink()
        say(f"removed {env_file}")
    if now:
        _systemctl("daemon-reload")
    else:
        say("next: systemctl --user stop tiqo; systemctl --user daemon-reload")


__all__ = ["app", "client", "ps_table"]
