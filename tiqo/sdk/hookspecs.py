"""pluggy hook specifications. Each hook receives a ``register`` callback and returns nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("tiqo")
hookimpl = pluggy.HookimplMarker("tiqo")


@hookspec
def register_engines(register: Callable[[Any], None]) -> None:
    """Call ``register(engine)`` for each local engine (an object implementing ``tiqo.sdk.Engine``)."""


@hookspec
def register_providers(register: Callable[[Any], None]) -> None:
    """Call ``register(kind)`` for each external provider kind (an object implementing ``tiqo.sdk.ProviderKind``)."""
