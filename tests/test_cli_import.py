"""The `tiqo` command stays thin: importing it pulls in no model library, no server stack and not the daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, DaemonProc, home_env, short_home

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


# What only a command body needs: the pydantic models of the API, the HTTP stack, the daemon supervision.
API_MODELS = tuple(
    f"tiqo.protocol.{m}" for m in ("embeddings", "images", "jobs", "openai", "speech", "tiqo", "vectors")
)
BODY_ONLY = ("httpx", "httpcore", "tiqo.client.client", "tiqo.client.transport", *API_MODELS)
COMMAND_MODULES = ("tiqo.cli.vec", "tiqo.cli.voice", "tiqo.cli.media", "tiqo.cli.budget", "tiqo.cli.daemon")


def _modules_after(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `tiqo ARGS` in a fresh interpreter; the modules it had imported when it exited."""
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
        f"sys.argv = ['tiqo', *{args!r}]\n"
        "from tiqo.cli.main import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, input="", capture_output=True, text=True, timeout=120
    )
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    return result, set(json.loads(line.removeprefix("MODULES ")))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize(
    "args",
    [["--help"], ["ask", "--help"], ["vec", "--help"], ["keys", "list", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_nothing_a_command_body_needs(args: list[str]) -> None:
    home = short_home()
    try:
        result, modules = _modules_after(args, home_env(home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert _loaded(modules, (*BODY_ONLY, *HEAVY, "pydantic")) == []
    if args == ["--help"]:  # printed from the command table: no typer, and no command module for its summary
        assert _loaded(modules, ("typer", "click", "tiqo.cli.app", *COMMAND_MODULES)) == []
    else:  # a command's own help loads its module, not the others
        assert _loaded(modules, tuple(m for m in COMMAND_MODULES if not m.endswith("." + args[0]))) == []


def test_shell_completion_imports_nothing_a_command_body_needs() -> None:
    home = short_home()
    env = home_env(home, _TIQO_COMPLETE="complete_bash", COMP_WORDS="tiqo v", COMP_CWORD="1")
    try:
        result, modules = _modules_after([], env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert {"vec", "video", "voices"} <= {line.split(",")[-1] for line in result.stdout.split()}
    assert _loaded(modules, (*BODY_ONLY, *HEAVY, "pydantic")) == []


def test_ask_imports_its_own_command_and_the_transport_only(daemon: DaemonProc) -> None:
    """A warm `tiqo ask` over the real socket: one command module, the transport, and no rich (the answer streams to
    plain stdout), no pydantic (neither the API's models nor typer 0.29's coercion of every option: +70 ms), no httpx
    command line (click, pygments), no other command."""
    result, modules = _modules_after(["ask", "--max-tokens", "1", "hi"], daemon.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "tiqo.cli.ask" in modules and "tiqo.client.transport" in modules and "httpx" in modules
    assert (
        _loaded(modules, ("rich", "click", "pygments", "httpx._main", "pydantic", *API_MODELS, *COMMAND_MODULES)) == []
    )
    assert _loaded(modules, HEAVY) == []
