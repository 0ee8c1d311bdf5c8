"""Loads engines and providers through pluggy: built-ins and third-party packages take the same path."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from tiqo.sdk import hookspecs
from tiqo.sdk.hookspecs import hookimpl

log = logging.getLogger("tiqo.plugins")
ENTRY_POINT_GROUP = "tiqo"


class _Builtins:
    @hookimpl
    def register_engines(self, register: Any) -> None:
        from tiqo.daemon.engines.llama import LlamaEngine

        register(LlamaEngine())


@dataclass
class PluginReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def load_plugins(allow_third_party: bool = True) -> tuple[pluggy.PluginManager, PluginReport]:
    """A plugin that fails to import or register is reported, never fatal."""
    pm = pluggy.PluginManager("tiqo")
    pm.add_hookspecs(hookspecs)
    report = PluginReport()
    pm.register(_Builtins(), name="builtin")
    report.loaded.append("builtin")
    if allow_third_party:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                pm.register(ep.load(), name=ep.name)
                report.loaded.append(ep.name)
            except Exception as exc:  # a broken plugin must not stop the daemon
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                report.failed[ep.name] = f"{type(exc).__name__}: {exc}"
    return pm, report


def collect_engines(pm: pluggy.PluginManager, report: PluginReport) -> dict[str, Any]:
    engines: dict[str, Any] = {}

    def register(engine: Any) -> None:
        engines[engine.name] = engine

    for impl in pm.hook.register_engines.get_hookimpls():
        try:
            impl.function(register=register)
        except Exception as exc:
            log.warning("plugin %s failed to register engines: %s", impl.plugin_name, exc)
            report.failed[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    return engines
