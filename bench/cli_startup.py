"""How long does the ``tiqo`` command take as a whole process? Every TAB completion and every ``tiqo ask`` in a
script pays the start-up, so it is measured from outside, start to exit, set-up included.

Starts a daemon with the bundled models in a private TIQO_HOME, warms it with one ``tiqo ask``, then runs, in turn:
``python -c pass`` (the interpreter alone, for scale), ``tiqo --help`` and ``tiqo ask --max-tokens 1 hi`` (a warm
daemon: the answer comes from the loaded model or its cache, so what is left is the command's own start-up). Prints
wall time and CPU time (user + system of the child, from ``wait4``: steadier than wall time on a shared machine)
as min and median per command.

``--compare DIR`` also runs the same commands with ``PYTHONPATH=DIR`` (another checkout of tiqo, e.g. main before a
change), each run alternating with this checkout's, against the same daemon, and prints the ratio of the medians.

Numbers only, no asserts (the issue's goal: ``tiqo --help`` <= 0.15 s and a warm ask <= 0.2 s).

Run:  .venv/bin/python bench/cli_startup.py [--runs 15] [--compare ../main] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _daemon import start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parent.parent


def tiqo_command() -> list[str]:
    """The installed console script when there is one (what users run), else ``python -m tiqo``."""
    script = Path(sys.executable).parent / "tiqo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tiqo"]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one whole process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
    return {
        "wall_min": min(walls),
        "wall_median": statistics.median(walls),
        "cpu_min": min(cpus),
        "cpu_median": statistics.median(cpus),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (after one warm-up)")
    parser.add_argument("--compare", type=Path, help="another checkout to run side by side (its PYTHONPATH)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tqc", dir="/tmp"))  # short: Unix socket paths are limited to ~104 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_") and k != "XDG_RUNTIME_DIR"}
    env.update(TIQO_HOME=str(home), NO_COLOR="1", TERM="dumb", PYTHONPATH=str(ROOT))
    sides = {"this": env}
    if args.compare is not None:
        sides["compare"] = {**env, "PYTHONPATH": str(args.compare.resolve())}
    tiqo = tiqo_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "tiqo --help": [*tiqo, "--help"],
        "tiqo ask --max-tokens 1 hi": [*tiqo, "ask", "--max-tokens", "1", "hi"],
    }
    proc, client = start_daemon(home, env)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, argv in commands.items():
            samples: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
            for side_env in sides.values():
                run_once(argv, side_env)  # warm-up: the model loads, files reach the page cache
            for _ in range(args.runs):
                for side, side_env in sides.items():  # alternating: a drift in machine speed hits both sides
                    samples[side].append(run_once(argv, side_env))
            results[name] = {side: summary(s) for side, s in samples.items()}
    finally:
        stop_daemon(proc, client)
        shutil.rmtree(home, ignore_errors=True)
    report(results, args.runs, args.json)


def report(results: dict[str, dict[str, dict[str, float]]], runs: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"runs": runs, "load_avg": os.getloadavg(), "results": results}, indent=2))
        return
    print(f"{runs} runs each; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'command':<28} {'side':<8} {'wall min':>9} {'median':>9} {'cpu min':>9} {'median':>9}")
    for name, sides in results.items():
        for side, s in sides.items():
            print(
                f"{name:<28} {side:<8} {s['wall_min']:9.3f} {s['wall_median']:9.3f} "
                f"{s['cpu_min']:9.3f} {s['cpu_median']:9.3f}"
            )
        if "compare" in sides:
            ratio: dict[str, Any] = {k: sides["this"][k] / sides["compare"][k] for k in ("wall_median", "cpu_median")}
            print(f"{'':<28} {'ratio':<8} {'':>9} {ratio['wall_median']:9.2f} {'':>9} {ratio['cpu_median']:9.2f}")


if __name__ == "__main__":
    main()
