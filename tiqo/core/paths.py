"""Where tiqo keeps things: platformdirs locations, or everything under ``TIQO_HOME``."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) and refuse one that another user owns or others can write."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; set TIQO_HOME or TIQO_SOCKET to a folder of yours")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
