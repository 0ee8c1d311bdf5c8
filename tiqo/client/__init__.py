"""Client of the daemon's API: one method per route, plus daemon autostart.

The names load on first use (PEP 562), so ``from tiqo.client.streams import ApiError`` does not pull in the
transport, the daemon supervision and httpx with it: the CLI imports its command modules for ``--help``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiqo.client.client import ApiError, DaemonUnavailable, Stream, TiqoClient

__all__ = ["ApiError", "DaemonUnavailable", "Stream", "TiqoClient"]

_HOMES = {
    "ApiError": "tiqo.client.streams",
    "DaemonUnavailable": "tiqo.client.streams",
    "Stream": "tiqo.client.streams",
    "TiqoClient": "tiqo.client.client",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tiqo.client' has no attribute {name!r}")
