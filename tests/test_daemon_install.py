"""`tiqo daemon install|uninstall`: the systemd user unit, under a private XDG_CONFIG_HOME. systemctl is a recording
stand-in on PATH (the real one is never called); the unit's own command line is run to show it starts a daemon."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import home_env, run_cli, short_home


@dataclass
class Box:
    home: Path
    config: Path  # XDG_CONFIG_HOME
    bin: Path  # first on PATH: the systemctl stand-in lives here
    calls: Path  # what it was asked, one line per call

    @property
    def unit(self) -> Path:
        return self.config / "systemd" / "user" / "tiqo.service"

    def env(self, **extra: str) -> dict[str, str]:
        extra.setdefault("PATH", f"{self.bin}:/usr/bin:/bin")
        return home_env(self.home, XDG_CONFIG_HOME=str(self.config), **extra)

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("daemon", *args, env=self.env(**extra))

    def systemctl(self, fails: bool = False) -> None:
        script = self.bin / "systemctl"
        failure = 'echo "Failed to connect to bus: No medium found" >&2; exit 1' if fails else "exit 0"
        script.write_text(f'#!/bin/sh\necho "$@" >> {self.calls}\n{failure}\n')
        script.chmod(0o755)

    def called(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    home = short_home()
    (tmp_path / "bin").mkdir()
    yield Box(home, tmp_path / "xdg", tmp_path / "bin", tmp_path / "calls")
    shutil.rmtree(home, ignore_errors=True)


def fields(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_install_writes_the_unit_and_prints_the_next_step(box: Box) -> None:
    box.systemctl()
    result = box.cli("install")
    assert result.returncode == 0, result.stderr
    assert f"wrote {box.unit}" in result.stdout
    assert "systemctl --user daemon-reload && systemctl --user enable --now tiqo" in result.stdout
    assert box.called() == []  # only --now runs systemctl
    unit = fields(box.unit.read_text())
    assert unit["ExecStart"] == [f'"{sys.executable}" -m tiqo.daemon']
    assert f'"TIQO_HOME={box.home}"' in unit["Environment"]
    assert unit["StandardOutput"] == [f"append:{box.home / 'logs' / 'daemon.log'}"]
    assert unit["WantedBy"] == ["default.target"] and unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2 3"]
    again = box.cli("install")
    assert again.returncode == 0 and f"unchanged: {box.unit}" in again.stdout


def test_install_now_runs_systemctl_and_reports_its_failure(box: Box) -> None:
    box.systemctl()
    result = box.cli("install", "--now")
    assert result.returncode == 0, result.stdout + result.stderr
    assert box.called() == ["--user daemon-reload", "--user enable --now tiqo.service"]
    assert "starts at login" in result.stdout

    box.calls.unlink()
    box.systemctl(fails=True)
    failed = box.cli("install", "--now")
    assert failed.returncode == 1
    assert "Failed to connect to bus" in failed.stdout and "tiqo daemon start" in failed.stdout, failed.stdout
    assert box.called() == ["--user daemon-reload"]


def test_without_systemctl_it_says_what_to_do_instead(box: Box) -> None:
    result = box.cli("install", "--now", PATH=str(box.bin))  # an empty folder: no systemctl at all
    assert result.returncode == 1
    assert "systemctl not found" in result.stdout and "tiqo daemon start" in result.stdout
    assert box.unit.exists()  # the unit is written all the same, for a later systemd


def test_uninstall_removes_the_unit_and_its_link(box: Box) -> None:
    box.systemctl()
    assert box.cli("install").returncode == 0
    wants = box.unit.parent / "default.target.wants"
    wants.mkdir()
    (wants / "tiqo.service").symlink_to(box.unit)  # what `systemctl --user enable` leaves
    result = box.cli("uninstall")
    assert result.returncode == 0 and f"removed {box.unit}" in result.stdout
    assert not box.unit.exists() and not (wants / "tiqo.service").is_symlink()
    assert "systemctl --user daemon-reload" in result.stdout and box.called() == []
    assert "not installed" in box.cli("uninstall").stdout

    assert box.cli("install").returncode == 0
    now = box.cli("uninstall", "--now")
    assert now.returncode == 0 and not box.unit.exists()
    assert box.called() == ["--user disable --now tiqo.service", "--user daemon-reload"]


def test_the_units_command_starts_a_working_daemon(box: Box) -> None:
    """Run ExecStart with the unit's Environment, the way systemd would, and talk to the daemon it starts."""
    assert box.cli("install").returncode == 0
    unit = fields(box.unit.read_text())
    env = {"HOME": os.environ.get("HOME", "/tmp")}
    for item in unit["Environment"]:
        key, _, value = shlex.split(item)[0].partition("=")
        env[key] = value
    log = Path(unit["StandardOutput"][0].removeprefix("append:"))
    with log.open("ab") as out:
        proc = subprocess.Popen(shlex.split(unit["ExecStart"][0]), env=env, stdout=out, stderr=out)
    try:
        sock = box.home / "run" / "tiqo.sock"
        health = None
        for _ in range(600):
            if proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                transport = httpx.HTTPTransport(uds=str(sock))
                with httpx.Client(transport=transport, base_url="http://tiqo", timeout=5) as http:
                    health = http.get("/tiqo/health").json()
                    break
            time.sleep(0.1)
        assert health is not None and health["pid"] == proc.pid, log.read_text()[-2000:]
        status = run_cli("daemon", "status", "--json", env=box.env())
        assert f'"pid": {proc.pid}' in status.stdout  # the CLI finds the service's daemon
    finally:
        proc.terminate()
        proc.wait(30)


def test_install_backup_adds_a_daily_timer_and_uninstall_removes_it(box: Box, tmp_path: Path) -> None:
    """`--backup DIR --keep N`: tiqo-backup.service runs `tiqo backup --keep N DIR` with the daemon's environment,
    tiqo-backup.timer runs it daily; its command line, run by hand, writes a dated archive and rotates."""
    box.systemctl()
    folder = tmp_path / "backups"
    result = box.cli("install", "--backup", str(folder), "--keep", "2", "--now")
    assert result.returncode == 0, result.stdout + result.stderr
    assert box.called() == ["--user daemon-reload", "--user enable --now tiqo.service tiqo-backup.timer"]
    service = fields((box.unit.parent / "tiqo-backup.service").read_text())
    timer = fields((box.unit.parent / "tiqo-backup.timer").read_text())
    assert service["Type"] == ["oneshot"] and service["Wants"] == ["tiqo.service"]
    assert service["ExecStart"] == [f'"{sys.executable}" -m tiqo --no-autostart backup --keep 2 "{folder}"']
    assert f'"TIQO_HOME={box.home}"' in service["Environment"]
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]
    assert timer["WantedBy"] == ["timers.target"]

    for old in ("tiqo-20200101-000000.tar.gz", "tiqo-20200102-000000.tar.gz"):
        folder.mkdir(exist_ok=True)
        (folder / old).write_text("old")
    argv = shlex.split(service["ExecStart"][0])
    started = run_cli("daemon", "start", env=box.env())
    assert started.returncode == 0, started.stderr
    try:
        ran = subprocess.run(argv, env=box.env(), capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
    finally:
        run_cli("daemon", "stop", env=box.env())
    archives = sorted(p.name for p in folder.iterdir())
    assert len(archives) == 2 and archives[0] == "tiqo-20200102-000000.tar.gz", archives  # the oldest rotated out

    box.calls.unlink()
    gone = box.cli("uninstall", "--now")
    assert gone.returncode == 0
    assert box.called() == ["--user disable --now tiqo.service tiqo-backup.timer", "--user daemon-reload"]
    assert not (box.unit.parent / "tiqo-backup.timer").exists()
    assert not (box.unit.parent / "tiqo-backup.service").exists()
