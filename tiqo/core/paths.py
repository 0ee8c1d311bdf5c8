"""Where tiqo keeps things: platformdirs locations, or everything under ``TIQO_HOME``."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tiqo.core.errors import BadRequest, ConfigError

APP = "tiqo"
# sun_path is 108 bytes on Linux (104 on macOS), including the terminating NUL.
MAX_SOCKET_PATH = 103


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path
    log_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Paths:
        env = dict(os.environ if env is None else env)
        home = env.get("TIQO_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(root / "config", root / "state", root / "cache", root / "run", root / "logs")
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP, appauthor=False)
        return cls(
            Path(dirs.user_config_dir),
            Path(dirs.user_state_dir),
            Path(dirs.user_cache_dir),
            _runtime_dir(env),
            Path(dirs.user_log_dir),
        )

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def keys_file(self) -> Path:
        """API keys of external providers (mode 0600)."""
        return self.config_dir / "keys.toml"

    @property
    def db_file(self) -> Path:
        return self.state_dir / "tiqo.db"

    @property
    def default_socket(self) -> Path:
        return self.runtime_dir / "tiqo.sock"

    @property
    def daemon_file(self) -> Path:
        """JSON status file (pid, version, socket) — present only while a daemon runs."""
        return self.runtime_dir / "daemon.json"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "daemon.lock"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "daemon.log"

    @property
    def data_dir(self) -> Path:
        """Large derived files (assembled model weights)."""
        return self.state_dir / "models"


def _runtime_dir(env: dict[str, str]) -> Path:
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / APP
    # No per-user runtime dir (containers, cron, macOS): a private folder in the temp dir.
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


# Every file tiqo writes is private from its first byte: the daemon and the CLI run with this umask (set once,
# early, by ``use_private_umask``). Files a user names (``tiqo speak -o out.wav``) are the user's own and are created
# with the umask the process started with (``open_user_file``).
PRIVATE_UMASK = 0o077
_user_umask: int | None = None


def use_private_umask() -> None:
    """Make every file and folder this process creates from now on private (0600 / 0700)."""
    global _user_umask
    previous = os.umask(PRIVATE_UMASK)
    if _user_umask is None:
        _user_umask = previous


def user_umask() -> int:
    """The umask the user started this process with (before ``use_private_umask``)."""
    if _user_umask is not None:
        return _user_umask
    current = os.umask(PRIVATE_UMASK)
    os.umask(current)
    return current


def open_user_file(path: Path, mode: str = "w") -> IO[Any]:
    """Open a file the user asked for (``-o FILE``) for writing: a new one gets the mode the user's umask gives, an
    existing one keeps its own, as with any other program."""
    binary = "b" in mode
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return path.open("wb" if binary else "w")
    os.fchmod(fd, 0o666 & ~user_umask())
    return os.fdopen(fd, "wb" if binary else "w")


def make_private_dirs(path: Path) -> bool:
    """Create ``path`` and any missing parents, each 0700; True if ``path`` itself was created here. An existing
    folder is left as it is."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)  # never more than 0700, whatever the umask
    return bool(missing)


def ensure_private_dir(path: Path) -> Path:
    """Create tiqo's own folder ``path`` (0700, parents too) or close an existing one to 0700; refuse one that another
    user owns. Only for folders that are tiqo's alone (never a folder named by the user: see ``check_socket_dir``)."""
    make_private_dirs(path)
    if path.is_symlink() and path.parent.stat().st_mode & 0o002:
        # e.g. /tmp/tiqo-UID made a link by another user: following it could close some other folder of ours
        raise ConfigError(f"{path} is a symbolic link in a folder anyone can write", hint=f"remove {path}")
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to another user", hint="set TIQO_HOME (or TIQO_SOCKET) to a folder of yours")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_socket_dir(path: Path) -> None:
    """The folder of a socket path the user chose: created 0700 when missing; an existing one is never changed, and
    refused when another user could replace the socket in it (owned by someone else, or writable by others, even
    with the sticky bit of /tmp: anyone could put a socket of their own at the path first)."""
    if make_private_dirs(path):
        return
    hint = "set TIQO_SOCKET to a path in a folder only you can write, e.g. ~/.tiqo/tiqo.sock (tiqo creates it, 0700)"
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot use {path} for the socket: {exc.strerror}", hint=hint) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a folder", hint=hint)
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{path} belongs to another user, who could replace the socket", hint=hint)
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): one of them could put a socket "
            "of their own at the path and receive your requests",
            hint=hint,
        )


def acquire_lock(path: Path) -> IO[str] | None:
    """Hold an exclusive lock on ``path`` while the returned file stays open (a daemon for its lifetime, `tiqo restore`
    while it swaps files); None if another process holds it."""
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fh


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600 from its first byte (whatever the umask)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
    os.replace(tmp, path)


def tighten(path: Path) -> None:
    """Close a file an older tiqo left readable by others to 0600 (a missing one is fine)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, 0o600)


def user_path(text: str | Path, param: str = "path") -> Path:
    """``text`` with ``~`` expanded; a ``~user`` that names no user is a 400, not a crash."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~nobody/x": no such user, so no home directory to expand to
        raise BadRequest(
            f"{str(text)[:80]!r}: ~ names no user whose home directory is known",
            param=param,
            hint="give an absolute path, or ~/ for your own home",
        ) from None


def socket_answers(path: Path, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
