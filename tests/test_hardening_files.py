"""Hardening (issue 16), findings 9, 10 and 13: what tiqo leaves on disk. Private file modes from the first byte, a
socket path that never damages a shared folder or a file that is not a socket, and secrets kept out of argv,
config.toml readable by others, the systemd unit and `tiqo config show`. Real CLI and daemon processes throughout.

The tests run their processes under a known, permissive umask (022, the usual default) so that they show what tiqo
itself chooses, not what the test runner happened to inherit."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import home_env, run_cli, short_home, start_daemon


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    """Children started meanwhile inherit ``value``, as they would from a user's shell."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_home()
    yield path
    with contextlib.suppress(Exception):
        run_cli("daemon", "stop", env=home_env(path), timeout=60)
    shutil.rmtree(path, ignore_errors=True)


def run_daemon(env: dict[str, str], timeout: float = 60) -> tuple[int | None, str]:
    """Start ``python -m tiqo.daemon``; (exit code, output) once it exits, or (None, output) if it came up serving
    (it is then stopped)."""
    sock = Path(env["TIQO_SOCKET"]) if env.get("TIQO_SOCKET") else Path(env["TIQO_HOME"]) / "run" / "tiqo.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiqo.daemon"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    serving = False
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(sock).st_mode):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(sock))
                    serving = True
                    break
                finally:
                    probe.close()
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return (None if serving else proc.returncode), out


# ======================================================================================================================
# Finding 9: every file tiqo writes is private from its first byte (umask 077 in the daemon and the CLI), every
# folder it creates is 0700, and files an older tiqo left open are closed. Files the user names (-o) are theirs.
# ======================================================================================================================


def chat_once(home: Path) -> None:
    """`tiqo chat` run as a user would, with the umask of most shells: it starts the daemon (which opens the
    database) and writes the chat history."""
    with umask(0o022):
        chat = run_cli("chat", input="/exit\n", env=home_env(home))
    assert chat.returncode == 0, chat.stdout + chat.stderr
    wal, shm = home / "state" / "tiqo.db-wal", home / "state" / "tiqo.db-shm"
    assert wal.exists() and shm.exists(), sorted(p.name for p in (home / "state").iterdir())


FILES = ["state/tiqo.db", "state/tiqo.db-wal", "state/tiqo.db-shm", "state/chat_history", "logs/daemon.log"]
FILES += ["run/daemon.json", "run/daemon.lock", "run/tiqo.sock"]


def test_every_file_and_folder_of_a_new_install_is_private_from_the_first_byte(home: Path) -> None:
    chat_once(home)
    assert {f: oct(mode(home / f)) for f in FILES} == {f: oct(0o600) for f in FILES}
    folders = ["state", "logs", "run", "config"]
    assert {f: oct(mode(home / f)) for f in folders} == {f: oct(0o700) for f in folders}


def test_files_an_older_tiqo_left_open_are_closed_and_existing_folders_left_alone(home: Path) -> None:
    with umask(0o022):  # what an older tiqo left: folders 0755, files 0644
        for folder in ("state", "config"):
            (home / folder).mkdir()
        for name in ("state/tiqo.db", "state/chat_history", "config/config.toml"):
            (home / name).write_text("")
    chat_once(home)
    files = [*FILES, "config/config.toml"]
    assert {f: oct(mode(home / f)) for f in files} == {f: oct(0o600) for f in files}
    # a folder tiqo did not create may be the user's (TIQO_HOME=~ makes ~/state tiqo's): never chmod-ed
    assert mode(home / "state") == mode(home / "config") == 0o755
    assert mode(home / "logs") == mode(home / "run") == 0o700


def test_the_users_own_output_file_keeps_the_users_umask(tmp_path: Path) -> None:
    d = start_daemon()
    try:
        for user_umask, expected in ((0o022, 0o644), (0o027, 0o640)):
            target = tmp_path / f"hello-{user_umask:o}.wav"
            with umask(user_umask):
                spoken = d.cli("speak", "Hi.", "-o", str(target))
            assert spoken.returncode == 0, spoken.stderr
            assert target.stat().st_size > 44 and mode(target) == expected
        # an existing file keeps its own mode when it is overwritten
        os.chmod(target, 0o604)
        with umask(0o077):
            assert d.cli("speak", "Hi.", "-o", str(target)).returncode == 0
        assert mode(target) == 0o604
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


# ======================================================================================================================
# Finding 10: TIQO_SOCKET in a shared folder must not chmod that folder, and only a dead socket of ours is removed.
# ======================================================================================================================


@pytest.mark.parametrize("shared_mode", [0o1777, 0o777], ids=["sticky-like-tmp", "world-writable"])
def test_a_socket_in_a_shared_folder_is_refused_and_the_folder_left_alone(home: Path, shared_mode: int) -> None:
    shared = home / "shared"
    shared.mkdir()
    os.chmod(shared, shared_mode)
    with umask(0o022):
        code, out = run_daemon(home_env(home, TIQO_SOCKET=str(shared / "tiqo.sock")))
    assert mode(shared) == shared_mode, f"tiqo changed the mode of a shared folder to {mode(shared):o}"
    assert code == 2, out
    assert "other users" in out and "hint:" in out and "TIQO_SOCKET" in out, out
    assert not (shared / "tiqo.sock").exists()


def test_a_missing_socket_folder_is_created_private_and_used(home: Path) -> None:
    sock = home / "mine" / "deep" / "tiqo.sock"
    with umask(0o022):
        code, out = run_daemon(home_env(home, TIQO_SOCKET=str(sock)))
    assert code is None, out  # it served
    assert mode(home / "mine" / "deep") == 0o700 and mode(home / "mine") == 0o700


@pytest.mark.parametrize("kind", ["file", "symlink", "fifo"])
def test_something_that_is_not_a_socket_is_never_removed(home: Path, kind: str) -> None:
    folder = home / "sock"
    folder.mkdir(mode=0o700)
    sock = folder / "tiqo.sock"
    precious = home / "precious.txt"
    precious.write_text("keep me")
    if kind == "file":
        sock.write_text("keep me")
    elif kind == "symlink":
        sock.symlink_to(precious)
    else:
        os.mkfifo(sock)
    env = home_env(home, TIQO_SOCKET=str(sock))
    code, out = run_daemon(env)
    assert code == 2, out
    assert "not a socket" in out and "hint:" in out, out
    stopped = run_cli("daemon", "stop", env=env)  # cleans a crashed daemon's leftovers: not this
    assert stopped.returncode == 0, stopped.stderr
    assert os.path.lexists(sock) and not stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert precious.read_text() == "keep me"
    if kind == "file":
        assert sock.read_text() == "keep me"


def test_a_dead_socket_of_ours_is_still_replaced(home: Path) -> None:
    sock = home / "run" / "tiqo.sock"
    sock.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))  # what a daemon killed with -9 leaves: a socket file nobody answers on
    dead.close()
    code, out = run_daemon(home_env(home))
    assert code is None, out


def test_a_too_long_socket_path_hint_names_a_private_folder_not_the_temp_dir(home: Path) -> None:
    sock = home / ("x" * 120) / "tiqo.sock"
    env = home_env(home, TIQO_SOCKET=str(sock))
    code, out = run_daemon(env)
    assert code == 2 and "too long" in out, out
    hint = out.split("hint:", 1)[1]
    assert "/tmp" not in hint and "TMP" not in hint, hint
    doctor = run_cli("doctor", "--json", "--no-load", env=env)
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "socket")
    assert check["status"] == "fail" and "TIQO_SOCKET" in check["fix"] and "/tmp" not in check["fix"], check


# ======================================================================================================================
# Finding 13: secrets stay out of argv, out of files others can read, out of the systemd unit and out of
# `tiqo config show`.
# ======================================================================================================================

DEAD_URL = "http://127.0.0.1:9/v1"  # never called: adding a provider does not contact it
REDIS_PASSWORD = "s3cretRedisPw"
WEBHOOK_TOKEN = "tok3nWebhookXYZ"
SECRET_ENV = {
    "TIQO_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
    "TIQO_ALERT_WEBHOOK": f"https://hooks.example.com/services/T000/B000/{WEBHOOK_TOKEN}",
}


@pytest.mark.parametrize(
    "header",
    ["Authorization: Bearer sk-live-123456", "x-api-key: sk-123456", "Api-Key: 123", "X-Auth-Token: tok-98765"],
)
def test_a_secret_header_on_the_command_line_is_refused(home: Path, header: str) -> None:
    result = run_cli(
        "--no-autostart", "providers", "add", "corp", "--base-url", DEAD_URL, "-H", header,
        env=home_env(home),
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tiqo keys add corp" in result.stderr, result.stderr
    assert header.split(":", 1)[1].strip() not in result.stdout + result.stderr
    assert not (home / "config" / "config.toml").exists()


def test_config_toml_is_private_and_plain_headers_still_work(home: Path) -> None:
    d = start_daemon(home)
    try:
        with umask(0o022):
            added = d.cli("providers", "add", "corp", "--base-url", DEAD_URL, "-H", "OpenAI-Organization: org-1")
        assert added.returncode == 0, added.stderr
        config = home / "config" / "config.toml"
        assert "org-1" in config.read_text()
        assert mode(config) == 0o600
    finally:
        d.stop()
    with umask(0o022):
        changed = run_cli("config", "set", "state.redis_url", SECRET_ENV["TIQO_REDIS_URL"], env=home_env(home))
    assert changed.returncode == 0 and REDIS_PASSWORD not in changed.stdout, changed.stdout + changed.stderr
    assert mode(config) == 0o600


def test_config_show_redacts_passwords_and_webhook_tokens(home: Path) -> None:
    from_toml = run_cli("config", "set", "budget.alert_webhook", SECRET_ENV["TIQO_ALERT_WEBHOOK"], env=home_env(home))
    assert from_toml.returncode == 0, from_toml.stderr
    assert WEBHOOK_TOKEN not in from_toml.stdout + from_toml.stderr
    for env in (home_env(home), home_env(home, **SECRET_ENV)):
        table = run_cli("config", "show", env=env)
        assert table.returncode == 0 and "state.redis_url" in table.stdout, table.stderr
        assert WEBHOOK_TOKEN not in table.stdout and REDIS_PASSWORD not in table.stdout
        shown = run_cli("config", "show", "--json", env=env)
        assert WEBHOOK_TOKEN not in shown.stdout and REDIS_PASSWORD not in shown.stdout
        values = {row["key"]: row["value"] for row in json.loads(shown.stdout)}
        assert values["budget.alert_webhook"] == "https://hooks.example.com/***"
    assert values["state.redis_url"] == "redis://:***@127.0.0.1:6379/0"


def test_the_systemd_unit_holds_no_secret(home: Path, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    env = home_env(home, XDG_CONFIG_HOME=str(xdg), **SECRET_ENV)
    with umask(0o022):
        installed = run_cli("daemon", "install", env=env)
    assert installed.returncode == 0, installed.stderr
    unit = xdg / "systemd" / "user" / "tiqo.service"
    text = unit.read_text()
    assert REDIS_PASSWORD not in text and WEBHOOK_TOKEN not in text
    assert REDIS_PASSWORD not in installed.stdout and WEBHOOK_TOKEN not in installed.stdout
    assert mode(unit) == 0o600
    lines = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("EnvironmentFile=")]
    assert len(lines) == 1, text
    env_file = Path(lines[0])
    assert env_file.is_absolute() and mode(env_file) == 0o600
    values = dict(
        item.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
        for item in shlex.split(line)
    )
    assert values == SECRET_ENV
    assert f"TIQO_HOME={home}" in text  # the rest stays in the unit, readable
    removed = run_cli("daemon", "uninstall", env=env)
    assert removed.returncode == 0 and not unit.exists() and not env_file.exists()
