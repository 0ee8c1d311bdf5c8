"""Which engine should run the classifier's patterns: Python's ``re``, the ``regex`` module (with a timeout), or RE2?

Scans the shipped restricted-data patterns (``tiqo/daemon/catalog/data/routing.toml``) and the task markers (code,
maths, analysis; case-insensitive) over adversarial texts of growing length, with each engine:

* ``a.`` repeated: the e-mail pattern's ``[A-Za-z0-9._%+-]+@`` retries from every position (quadratic when
  backtracking);
* ``select `` repeated: the code marker ``\\bSELECT\\b.+\\bFROM\\b`` does the same;
* a mixed text with no match and a text of 4-byte characters (UTF-8 size, not character count, drives RE2).

Reports seconds per scan of every pattern, and the growth ratio when the text is 8 times longer (8 is linear, 64
quadratic). A backtracking scan that exceeds ``--cap`` seconds is stopped (``regex`` timeout) or skipped for the
longer sizes (``re``: it cannot be stopped). Then checks that RE2 releases the GIL: the longest gap of a 1 ms ticker
in the main thread while a worker thread scans 16 MB. Numbers only, no asserts.

Run:  .venv/bin/python bench/classify_scan.py [--cap SECONDS] [--big CHARS]
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tiqo.daemon.catalog.routing_config import default_routing  # noqa: E402
from tiqo.policy import classify as C  # noqa: E402
from tiqo.policy.textscan import compile_pattern, encode  # noqa: E402

MARKERS = [(p.source, True) for p in (C._CODE, C._MATH, C._ANALYSIS)]
RESTRICTED = [(p, False) for p in default_routing()["classification"]["restricted_patterns"]]
INPUTS: dict[str, Callable[[int], str]] = {
    "a.": lambda n: "a." * (n // 2),
    "select": lambda n: "select " * (n // 7),
    "mixed": lambda n: ("The quarterly report, SELECT 3 of 4 a.b c-d " * (n // 44 + 1))[:n],
    "emoji": lambda n: "\U0001f600" * n,
}


def scanner(engine: str) -> Callable[[str, float], float]:
    """A function that scans a text with every pattern and returns the seconds it took (inf past the cap)."""
    pairs = MARKERS + RESTRICTED
    if engine == "re":
        compiled = [re.compile(p, re.IGNORECASE if ci else 0) for p, ci in pairs]
        return lambda text, cap: _timed(lambda: [c.search(text) for c in compiled])
    if engine == "regex":
        import regex

        rx = [regex.compile(p, regex.IGNORECASE if ci else 0) for p, ci in pairs]

        def run(text: str, cap: float) -> float:
            try:
                return _timed(lambda: [c.search(text, timeout=cap) for c in rx])
            except TimeoutError:
                return float("inf")

        return run
    scans = [compile_pattern(p, ignore_case=ci) for p, ci in pairs]
    return lambda text, cap: _timed(lambda: [s.search(encode(text)) for s in scans])


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def growth(cap: float) -> None:
    sizes = (5_000, 40_000, 320_000)
    print(f"seconds per scan of {len(MARKERS) + len(RESTRICTED)} patterns (inf: over {cap:g} s); ratio = 8x longer")
    for engine in ("re", "regex", "re2"):
        try:
            scan = scanner(engine)
        except ImportError:
            print(f"  {engine}: not installed")
            continue
        for name, make in INPUTS.items():
            times: list[float] = []
            for n in sizes:
                if times and times[-1] * 64 > cap * 4 and engine == "re":
                    times.append(float("inf"))  # would run for minutes and cannot be interrupted
                    continue
                times.append(scan(make(n), cap))
            ratios = [b / a if a and a != float("inf") else float("nan") for a, b in itertools.pairwise(times)]
            cells = "  ".join(f"{n:>7}: {t:8.4f}" for n, t in zip(sizes, times, strict=True))
            print(f"  {engine:5} {name:7} {cells}   ratios {', '.join(f'{r:.1f}' for r in ratios)}")


def gil(big: int) -> None:
    scans = [compile_pattern(p, ignore_case=ci) for p, ci in MARKERS + RESTRICTED]
    text = "a." * (big // 2)
    gaps: list[float] = []

    def work() -> None:
        data = encode(text)
        for s in scans:
            s.search(data)

    worker = threading.Thread(target=work)
    start = time.perf_counter()
    worker.start()
    last = start
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    total = time.perf_counter() - start
    print(f"re2 over {big} chars in a thread: {total:.3f} s; longest gap of a 1 ms ticker meanwhile {max(gaps):.4f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=5.0, help="seconds a backtracking scan may take")
    parser.add_argument("--big", type=int, default=16 << 20, help="characters of the GIL check's text")
    args = parser.parse_args()
    growth(args.cap)
    gil(args.big)


if __name__ == "__main__":
    main()
