"""``tiqo dash``: the live terminal dashboard. textual is imported here, inside the command, never by the CLI."""

from __future__ import annotations

import sys

from tiqo.cli.output import EXIT_USAGE, client, fail, handle_errors


@handle_errors
def dash() -> None:
    """Live dashboard: requests, spend, budgets, keys, loaded models and alerts, as they happen.

    Overview (requests per minute, spend today, cache hits, local/external share, errors), budget gauges with
    their alert marks, key health and usage, loaded models (l load, p pin, u unload), a live tail of requests
    (enter: how one was routed) and alerts as toasts. Data comes from the daemon's event stream; when the daemon
    stops, the dashboard says so and reconnects once it is back. ? shows every key; q quits.

    Example: tiqo dash
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("tiqo dash needs a terminal", "run it in a terminal; `tiqo events --json` suits pipes", EXIT_USAGE)
    with client() as c:
        c.health()  # starts the daemon like any other command (unless --no-autostart); fails with a hint if not
    try:
        from tiqo.tui.app import DashApp
    except ImportError as exc:  # textual is a dependency; a broken install says how to mend it
        fail(f"the dashboard cannot start: {exc}", "reinstall tiqo: `pip install --force-reinstall tiqo`")
    DashApp().run()
