"""The `tiqo` command stays thin: importing it pulls in no model library, no server stack and not the daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, home_env, short_home

HEAVY = (
    "torch",
    "llama_cpp",
    "faster_whisper",
    "piper",
    "diffusers",
    "transformers",
    "PIL",
    "lancedb",
    "numpy",
    "fastapi",
    "uvicorn",
    "prometheus_client",  # the daemon's /metrics only
    "tiqo.daemon",
)


def test_cli_import_pulls_in_no_heavy_modules() -> None:
    code = (
        "import json, sys\n"
        "import tiqo.cli.main\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    home = short_home()
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], env=home_env(home), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import tiqo.cli.main` imported {loaded}"


def _tiqo_commands() -> list[list[str]]:
    commands = [[sys.executable, "-m", "tiqo"]]
    script = Path(sys.executable).parent / "tiqo"  # the installed console script
    if script.exists():
        commands.append([str(script)])
    return commands


@pytest.mark.parametrize("command", _tiqo_commands(), ids=lambda c: "script" if len(c) == 1 else "module")
def test_cli_help_works(command: list[str]) -> None:
    home = short_home()
    try:
        result = subprocess.run(
            [*command, "--help"], env=home_env(home), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "ask" in result.stdout
        # --help must not start a daemon.
        assert not (home / "run" / "daemon.json").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
