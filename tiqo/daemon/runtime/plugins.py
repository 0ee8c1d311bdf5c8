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
        from tiqo.daemon.runtime.engines.diffusion import DiffusionEngine
        from tiqo.daemon.runtime.engines.embed import EmbedEngine
        from tiqo.daemon.runtime.engines.llama import LlamaEngine
        from tiqo.daemon.runtime.engines.piper import PiperEngine
        from tiqo.daemon.runtime.engines.whisper import WhisperEngine

        register(LlamaEngine())
        register(WhisperEngine())
        register(PiperEngine())
        register(EmbedEngine())
        register(DiffusionEngine())


@dataclass
class PluginReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    provides: dict[str, list[str]] = field(default_factory=dict)  # plugin -> "engine:llama.cpp", "provider:openai"

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded": [{"name": n, "provides": self.provides.get(n, [])} for n in self.loaded if n not in self.failed],
            "failed": [{"name": n, "error": e} for n, e in self.failed.items()],
        }


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
    """Engines by name. One that does not satisfy ``tiqo.sdk.Engine`` (the catalog asks it for its options and files)
    is reported, not used."""
    from tiqo.sdk.engine import Engine

    def name(engine: Any) -> str:
        if not isinstance(engine, Engine):
            raise TypeError(f"{engine!r} does not implement tiqo.sdk.Engine")
        return str(engine.name)

    return _collect(pm.hook.register_engines, report, "engine", name)


def collect_providers(pm: pluggy.PluginManager, report: PluginReport) -> dict[str, Any]:
    """Provider kinds by name. A kind that does not satisfy ``tiqo.sdk.ProviderKind`` is reported, not used."""
    from tiqo.sdk.provider import ProviderKind

    def name(kind: Any) -> str:
        if not isinstance(kind, ProviderKind):
            raise TypeError(f"{kind!r} does not implement tiqo.sdk.ProviderKind")
        return str(kind.kind)

    return _collect(pm.hook.register_providers, report, "provider", name)


def _collect(hook: Any, report: PluginReport, what: str, name_of: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name

        def register(obj: Any, plugin: str = plugin) -> None:
            name = name_of(obj)
            found[name] = obj
            report.provides.setdefault(plugin, []).append(f"{what}:{name}")

        try:
            impl.function(register=register)
        except Exception as exc:  # a broken plugin is reported; the daemon still starts
            log.warning("plugin %s failed to register %ss: %s", plugin, what, exc)
            report.failed[plugin] = f"{type(exc).__name__}: {exc}"
    return found
