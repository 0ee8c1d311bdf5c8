"""``tiqo backup`` (the daemon writes the archive while it serves), ``tiqo restore`` (into a stopped daemon's home),
and the systemd timer that `tiqo daemon install --backup DIR` adds."""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from tiqo.cli.output import EXIT_ERROR, client, console, fail, handle_errors, print_json
from tiqo.present import fmt_size

DATED = re.compile(r"^tiqo-\d{8}-\d{6}\.tar\.gz$")  # what --keep writes and rotates; nothing else is ever removed
BACKUP_UNIT = "tiqo-backup.service"
BACKUP_TIMER = "tiqo-backup.timer"
DEFAULT_KEEP = 7


def dated_name(now: float | None = None) -> str:
    return time.strftime("tiqo-%Y%m%d-%H%M%S.tar.gz", time.gmtime(now))


def rotate(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest dated archives of ``folder``; the removed ones."""
    dated = sorted(p for p in folder.iterdir() if DATED.match(p.name) and p.is_file())
    old = dated[: max(0, len(dated) - keep)]
    for path in old:
        path.unlink()
    return old


def _target(path: Path, keep: int | None) -> Path:
    path = path.expanduser().absolute()  # the daemon does not share this working folder
    if keep is None:
        return path
    from tiqo.core.paths import make_private_dirs

    make_private_dirs(path)
    return path / dated_name()


def _summary(result: dict[str, Any]) -> str:
    counts = result["counts"]
    keys = "with keys.toml" if result["include_keys"] else "without keys.toml"
    return (
        f"wrote {result['path']} ({fmt_size(result['bytes'])}, {result['seconds']:.2f}s): {counts['requests']} "
        f"requests, {counts['collections']} collections, {counts['vectors']} vectors, {keys}"
    )


@handle_errors
def backup(
    path: Path = typer.Argument(..., help="The archive to write (.tar, .tar.gz or .tgz); with --keep, a folder."),
    include_keys: bool = typer.Option(False, "--include-keys", help="Also put keys.toml (provider keys) in it."),
    keep: int | None = typer.Option(
        None, "--keep", min=1, help="PATH is a folder: write tiqo-DATE-TIME.tar.gz there, keep the N newest."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Back up the daemon's state while it serves, into one archive (mode 0600).

    The archive holds the database (SQLite's online backup), the vector collections, config.toml and a manifest of
    checksums; keys.toml only with --include-keys.

    Examples:

      tiqo backup ~/backups/tiqo.tar.gz

      tiqo backup --keep 7 ~/backups
    """
    dest = _target(path, keep)
    with client() as c, console.status(f"backing up to {dest}", spinner="dots") if not json_out else nullcontext():
        result = c.backup(str(dest), include_keys=include_keys)
    removed = rotate(dest.parent, keep) if keep is not None else []
    if json_out:
        print_json({**result, "removed": [str(p) for p in removed]})
        return
    console.print(_summary(result), soft_wrap=True)
    for old in removed:
        console.print(f"[dim]removed {old} (--keep {keep})[/]", soft_wrap=True)


@handle_errors
def restore(
    path: Path = typer.Argument(..., help="An archive written by `tiqo backup`."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Restore a backup into this home; the daemon must be stopped (`tiqo daemon stop`).

    Every member is checked against the archive's manifest before anything changes; an archive that is damaged,
    truncated or from a newer tiqo is refused. The replaced files move to <folder>.before-restore (remove it once
    you are satisfied). keys.toml stays as it is unless the archive holds one.

    Example: tiqo restore ~/backups/tiqo-20260101-030000.tar.gz
    """
    from tiqo.client import process
    from tiqo.core.errors import TiqoError
    from tiqo.core.restore import STOP_HINT
    from tiqo.core.restore import restore as restore_archive
    from tiqo.core.settings import Settings

    settings = Settings.load()
    status = process.read_status(settings)
    if status.alive or process.socket_answers(settings.socket_path):
        fail(f"the tiqo daemon is running (pid {status.pid or '?'}): restore replaces its state", STOP_HINT)
    try:
        with console.status(f"checking and restoring {path}", spinner="dots") if not json_out else nullcontext():
            result = restore_archive(path.expanduser().absolute(), settings.paths)
    except TiqoError as exc:
        fail(exc.message, exc.hint, EXIT_ERROR)
    if json_out:
        print_json(result)
        return
    counts = result["counts"]
    console.print(
        f"restored {result['archive']} (tiqo {result['tiqo_version']}, {counts.get('requests', 0)} requests, "
        f"{counts.get('collections', 0)} collections, {counts.get('vectors', 0)} vectors)",
        soft_wrap=True,
    )
    for kept in result["before_restore"]:
        console.print(f"[dim]the replaced files are in {kept}; remove it once you are satisfied[/]", soft_wrap=True)


# --------------------------------------------------------------------------- systemd timer (tiqo daemon install)
def timer_units(folder: str, keep: int, python: str, environment: list[str]) -> dict[str, str]:
    """``tiqo-backup.service`` (one `tiqo backup --keep N DIR` run, next to the daemon's service) and
    ``tiqo-backup.timer`` (daily, caught up after the machine was off). ``folder`` and ``python`` come quoted for
    systemd; ``environment`` is the daemon unit's Environment lines, so both agree on every folder."""
    service = [
        "# Written by `tiqo daemon install --backup`; `tiqo daemon uninstall` removes it.",
        "[Unit]",
        "Description=tiqo backup: one archive of the daemon's state, the oldest rotated out",
        "Documentation=man:tiqo(1)",
        "Wants=tiqo.service",
        "After=tiqo.service",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={python} -m tiqo --no-autostart backup --keep {keep} {folder}",
        *environment,
        "UMask=0077",
    ]
    timer = [
        "# Written by `tiqo daemon install --backup`; `tiqo daemon uninstall` removes it.",
        "[Unit]",
        "Description=daily tiqo backup",
        "",
        "[Timer]",
        "OnCalendar=daily",
        "Persistent=true",
        "RandomizedDelaySec=15min",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return {BACKUP_UNIT: "\n".join(service) + "\n", BACKUP_TIMER: "\n".join(timer) + "\n"}
