"""How many threads an engine computes with when its options do not say."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Physical cores minus one, at least one: leaves a core for the event loop and the rest of the machine.

    Measured on a shared 2-core machine (MODELS.md): 2 threads gave 78 tok/s idle but ~25 under load; 1 held ~57.
    """
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, physical - 1)
