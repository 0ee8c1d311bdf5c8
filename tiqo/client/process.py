"""Finding, starting and stopping the daemon process (used by the client's autostart and `tiqo daemon`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiqo.core.paths import ensure_private_dir, make_private_dirs
from tiqo.core.paths import socket_answers as socket_answers  # part of this module's API (the CLI, the TUI)
from tiqo.core.settings import Settings

LOG_ROTATE_BYTES = 10 * 1024 * 1024


@dataclass
class DaemonStatus:
    pid: int | None
    alive: bool
    socket: Path
    info: dict[str, Any]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as dead: ours is reaped here, and one that belongs to another
    parent (a daemon whose starting CLI has exited) is recognised from /proc."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
    return state not in ("Z", "X")


def read_status(settings: Settings) -> DaemonStatus:
    info: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        info = json.loads(settings.paths.daemon_file.read_text())
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    alive = pid is not None and pid_alive(pid)
    return DaemonStatus(pid, alive, Path(info.get("socket") or settings.socket_path), info)


def clean_stale(settings: Settings) -> list[str]:
    """Remove the status file and socket a crashed daemon left behind. Returns what was removed."""
    removed = []
    status = read_status(settings)
    if status.pid is not None and not status.alive:
        with contextlib.suppress(FileNotFoundError):
            settings.paths.daemon_file.unlink()
            removed.append(str(settings.paths.daemon_file))
    sock = settings.socket_path
    if not status.alive and is_own_socket(sock) and not socket_answers(sock):
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
            removed.append(str(sock))
    return removed


def is_own_socket(path: Path) -> bool:
    """True when ``path`` itself (not a link's target) is a socket of this user: never remove anything else there."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid()


def spawn(settings: Settings) -> subprocess.Popen[bytes]:
    """Start ``python -m tiqo.daemon`` detached, logging to the daemon log file."""
    paths = settings.paths
    make_private_dirs(paths.log_dir)
    ensure_private_dir(paths.runtime_dir)
    log_file = paths.log_file
    if log_file.exists() and log_file.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log_file, log_file.with_suffix(".log.1"))
    # 0600 from the first byte even when the caller (a program using the client library) has a looser umask
    with os.fdopen(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tiqo.daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024 - lines * 200))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-lines:]


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def terminate(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM (models unload, clean exit), then SIGKILL if it does not go in ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_exit(pid, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_exit(pid, 5.0)
