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
    from tiqo.cli.daemon_unit import install_units

    install_units(_settings(), now, backup, keep)


@app.command()
@handle_errors
def uninstall(
    now: bool = typer.Option(False, "--now", help="Also run systemctl: stop and disable it, then reload."),
) -> None:
    """Remove the systemd user units that `tiqo daemon install` wrote (the backup timer too).

    Without --now, the unit files (and their enablement links) are removed and the systemctl step is printed.

    Example: tiqo daemon uninstall --now
    """
    from tiqo.cli.daemon_unit import uninstall_units

    uninstall_units(now, _settings)


__all__ = ["app", "client", "ps_table"]
