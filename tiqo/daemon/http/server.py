"""Runs the daemon: one instance per runtime dir (flock), a 0600 Unix socket in a 0700 folder, uvicorn on it.

``daemon.json`` (pid, version, socket) exists exactly while a daemon serves; a stale one (dead pid) is
replaced, and a stale socket (ours, nobody answering) is removed before binding. The daemon runs with umask 077:
every file it writes is private from its first byte.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

from tiqo import __version__
from tiqo.core.errors import TiqoError
from tiqo.core.paths import (
    MAX_SOCKET_PATH,
    check_socket_dir,
    ensure_private_dir,
    make_private_dirs,
    socket_answers,
    tighten,
    use_private_umask,
)
from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.daemon")
EXIT_ALREADY_RUNNING = 3
EXIT_CONFIG = 2


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("tiqo.llama.cpp").setLevel(max(logging.WARNING, root.level))
    for noisy in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def remove_stale_socket(path: Path) -> None:
    """Remove what a crashed daemon left at ``path``: only a socket of ours that nobody answers on. Anything else
    there (a file, a link, another user's socket, a live server) is left alone and refused."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    hint = f"remove {path} yourself if it is not needed, or set TIQO_SOCKET to another path"
    if not stat.S_ISSOCK(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "a file"
        raise TiqoError(f"{path} exists and is not a socket ({what}): tiqo will not remove it", hint=hint)
    if socket_answers(path, timeout=1.0):
        raise TiqoError(f"another process is serving on {path}", hint="stop it with `tiqo daemon stop`")
    if st.st_uid != os.getuid():
        raise TiqoError(f"{path} is a socket of another user: tiqo will not remove it", hint=hint)
    log.warning("removing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 from the start (umask), replacing a stale one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise TiqoError(
            f"socket path is too long for Unix sockets ({len(str(path))} > {MAX_SOCKET_PATH} bytes): {path}",
            hint="set TIQO_SOCKET to a shorter path in a folder of yours, e.g. ~/.tiqo/tiqo.sock (tiqo creates the "
            "folder, mode 0700), or TIQO_HOME to a shorter folder",
        )
    check_socket_dir(path.parent)
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise TiqoError(
            f"cannot create the socket {path}: {exc.strerror}", hint="set TIQO_SOCKET to a path in a folder of yours"
        ) from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def write_status(settings: Settings, socket_path: Path) -> None:
    status = {
        "pid": os.getpid(),
        "version": __version__,
        "socket": str(socket_path),
        "started_at": time.time(),
        "python": sys.executable,
    }
    tmp = settings.paths.daemon_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, settings.paths.daemon_file)


def prepare_home(paths: Any) -> int | None:
    """Private umask and folders before the first file is written; an exit code when the runtime dir is unsafe."""
    use_private_umask()  # every file from the first byte: the database and its -wal/-shm, logs, config, vectors
    try:
        ensure_private_dir(paths.runtime_dir)  # tiqo's alone: closed to 0700 if it is not
    except TiqoError as exc:
        print(f"tiqo: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return EXIT_CONFIG
    # Created 0700 when missing; an existing one may be a folder of the user's (TIQO_HOME=~ makes ~/logs tiqo's log
    # folder) and is left as it is, with tiqo's own files in it closed where an older tiqo left them open.
    for folder in (paths.state_dir, paths.log_dir, paths.config_dir):
        make_private_dirs(folder)
    for path in (paths.log_file, paths.log_file.with_suffix(".log.1"), paths.config_file):
        tighten(path)
    return None


def uvicorn_config(app: Any, settings: Settings) -> Any:
    import uvicorn

    from tiqo.daemon.http.tcp import connection_limited

    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=connection_limited("httptools" if _has("httptools") else "h11", settings["daemon.listen_max_connections"]),
    )


def tcp_sockets(settings: Settings) -> list[socket.socket]:
    """The TCP listener of ``daemon.listen``, when it is set."""
    from tiqo.daemon.http.tcp import bind_tcp, parse_listen

    try:
        listen = parse_listen(settings["daemon.listen"])
    except ValueError as exc:
        raise TiqoError(str(exc), hint="use HOST:PORT, e.g. `tiqo config set daemon.listen 127.0.0.1:8311`") from None
    if listen is None:
        return []
    try:
        sock = bind_tcp(*listen)
    except OSError as exc:
        raise TiqoError(
            f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}",
            hint="pick another port with `tiqo config set daemon.listen 127.0.0.1:PORT`, or unset it",
        ) from None
    log.info("also serving /v1 over TCP on %s:%d (bearer tokens required)", *listen)
    return [sock]


def clean_up(paths: Any, socket_path: Path, bound: bool) -> None:
    """Status file first, then the socket: a client that sees no status file knows the daemon is gone."""
    with contextlib.suppress(FileNotFoundError):
        status = json.loads(paths.daemon_file.read_text())
        if status.get("pid") == os.getpid():
            paths.daemon_file.unlink()
    if bound:
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def fail(exc: TiqoError) -> int:
    log.error("%s", exc.message)
    print(f"tiqo: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
    return EXIT_CONFIG


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def load_settings() -> Settings:
    """The settings, with the umask set first; exits with EXIT_CONFIG when they do not load."""
    use_private_umask()
    try:
        settings = Settings.load()
    except TiqoError as exc:
        print(f"tiqo: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    setup_logging(settings["daemon.log_level"])
    return settings
