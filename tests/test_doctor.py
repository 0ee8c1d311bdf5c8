"""`tiqo doctor` as a real CLI subprocess: against a real daemon (it loads the bundled model), without one (it must
not start it), with broken settings, a keys file others can read, and without the optional tools on PATH."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, home_env, run_cli, short_home, wait_for

MODEL = "smollm2-135m"


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("doctor", "--json", *args, env=env)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, {c["name"]: c for c in report["checks"]}


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_home()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_with_a_running_daemon_it_loads_the_default_model(fresh_daemon: DaemonProc) -> None:
    code, checks = doctor(fresh_daemon.env)
    pid = fresh_daemon.client().get("/tiqo/health").json()["pid"]
    assert checks["daemon"]["status"] == "ok" and f"pid {pid}" in checks["daemon"]["detail"]
    assert checks["socket"]["status"] == "ok" and "mode 600" in checks["socket"]["detail"]
    assert checks["model load"]["status"] == "ok", checks["model load"]
    assert MODEL in checks["model load"]["detail"]
    assert checks["models"]["status"] == "ok" and MODEL in checks["models"]["detail"]
    assert checks["python"]["status"] == checks["config"]["status"] == "ok"
    assert checks["cpu"]["status"] == "ok" and "cores" in checks["cpu"]["detail"]
    assert {"gpu", "ffmpeg", "espeak-ng", "disk", "service"} <= set(checks)
    failed = [c for c in checks.values() if c["status"] == "fail"]
    assert code == (1 if failed else 0), failed
    # keep-alive 0: the model it loaded to check is not left taking memory
    http = fresh_daemon.client()
    assert wait_for(lambda: MODEL not in {m["name"] for m in http.get("/tiqo/ps").json()["models"]})

    shown = fresh_daemon.cli("doctor", "--no-load")
    assert "✓ daemon" in shown.stdout and "model load" in shown.stdout and "not tried (--no-load)" in shown.stdout


def test_without_a_daemon_it_says_how_to_start_one_and_never_starts_it(home: Path) -> None:
    env = home_env(home)
    code, checks = doctor(env)
    assert checks["daemon"]["status"] == "warn" and checks["daemon"]["fix"] == "tiqo daemon start"
    assert checks["model load"]["status"] == "info" and "not running" in checks["model load"]["detail"]
    assert not (home / "run" / "daemon.json").exists() and not (home / "run" / "tiqo.sock").exists()
    human = run_cli("doctor", env=env)
    assert "! daemon" in human.stdout and "fix: tiqo daemon start" in human.stdout, human.stdout
    assert human.returncode == code


def test_broken_settings_fail_with_the_fix(home: Path) -> None:
    (home / "config").mkdir(parents=True)
    config = home / "config" / "config.toml"
    config.write_text("[scheduler\nkeep_alive = ")
    result = run_cli("doctor", env=home_env(home))
    assert result.returncode == 1
    assert "✗ config" in result.stdout and f"fix or remove {config}" in result.stdout, result.stdout

    config.write_text("")
    code, checks = doctor(home_env(home, TIQO_KEEP_ALIVE="banana"))
    assert code == 1 and checks["config"]["status"] == "fail"
    assert checks["config"]["fix"].startswith("fix it with `tiqo config set scheduler.keep_alive")


def test_a_keys_file_others_can_read_is_reported(home: Path) -> None:
    (home / "config").mkdir(parents=True)
    keys = home / "config" / "keys.toml"
    keys.write_text('[stub.k1]\nsecret = "sk-doctor-test"\n')
    keys.chmod(0o644)
    _, checks = doctor(home_env(home), "--no-load")
    assert checks["keys file"]["status"] == "warn" and checks["keys file"]["fix"] == f"chmod 600 {keys}"
    keys.chmod(0o600)
    _, checks = doctor(home_env(home), "--no-load")
    assert checks["keys file"]["status"] == "ok"


def test_optional_tools_missing_or_present(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _, checks = doctor(home_env(home, PATH=str(empty)), "--no-load")
    for tool in ("ffmpeg", "espeak-ng"):
        assert checks[tool]["status"] == "warn" and "optional" in checks[tool]["detail"]
        assert tool in checks[tool]["fix"], checks[tool]

    tools = tmp_path / "tools"
    tools.mkdir()
    for name, line in (("ffmpeg", "ffmpeg version 9.9-test"), ("espeak-ng", "eSpeak NG text-to-speech: 9.9")):
        script = tools / name
        script.write_text(f"#!/bin/sh\necho '{line}'\n")
        script.chmod(0o755)
    _, checks = doctor(home_env(home, PATH=str(tools)), "--no-load")
    assert checks["ffmpeg"] == {"name": "ffmpeg", "status": "ok", "detail": "ffmpeg version 9.9-test", "fix": None}
    assert checks["espeak-ng"]["status"] == "ok" and "9.9" in checks["espeak-ng"]["detail"]


def test_every_problem_line_is_followed_by_its_fix(home: Path, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    result = run_cli("doctor", "--no-load", env=home_env(home, PATH=str(tmp_path / "bin")))
    lines = result.stdout.splitlines()
    problems = [i for i, line in enumerate(lines) if line.startswith(("! ", "✗ "))]
    assert problems, result.stdout
    for i in problems:
        assert lines[i + 1].strip().startswith("fix: "), (lines[i], lines[i + 1])


def test_every_command_has_an_example_in_its_help() -> None:
    import typer.main

    from tiqo.cli.app import app
    from tiqo.cli.manpage import _commands

    commands = _commands(typer.main.get_command(app), "tiqo")
    missing = [path for path, command in commands if "Example" not in (command.help or "")]
    assert missing == [], f"--help without an example: {missing}"
