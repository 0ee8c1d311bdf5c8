"""Import rules, read from the source (AST): the daemon's folders are its layers, and imports point down.

Inside tiqo/daemon, top to bottom (MAY_IMPORT is the rule; a package may always import its own modules):

    __main__    python -m tiqo.daemon
    root        the composition root: picks the concrete classes and builds every service
    http        server, ASGI app, TCP auth, OpenAPI error table, routes/ (one module per API family)
    services    one per capability: text (gateway), speech (voice), embeddings, RAG
    pipeline    who asks and what served, admission and recording, dispatch, committing a stream
    telemetry   gauges read from the live state at scrape time (keys, breakers, models, budgets): it reads upstream,
                runtime and accounting, so it sits above them; only the root and http import it
    upstream | runtime                                 calls that leave the machine | local compute, engines/
    catalog | cache | knowledge | media | accounting   peers
    state       the SQLite store, the Redis counters

Peers on one row never import each other, and neither do the modules of services/ or of http/routes/. Every daemon
module may import tiqo (the version), tiqo.core, tiqo.protocol, tiqo.policy and tiqo.sdk (PROJECT_MAY_IMPORT, the
project's own layers from DESIGN.md, is checked here too). Imports inside functions and under TYPE_CHECKING count
like any other. The edges today's code cannot avoid are listed in DEBTS with their reason; a debt that is paid fails
the test until it is struck from the list, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

TIQO = ROOT / "tiqo"

_PEERS = {"catalog", "cache", "knowledge", "media", "accounting"}
MAY_IMPORT: dict[str, set[str]] = {
    "__main__": {"root", "http", "services", "pipeline", "telemetry", "upstream", "runtime", *_PEERS, "state"},
    "root": {"http", "services", "pipeline", "telemetry", "upstream", "runtime", *_PEERS, "state"},
    "http": {"services", "pipeline", "telemetry", "upstream", "runtime", *_PEERS, "state"},
    "services": {"pipeline", "upstream", "runtime", *_PEERS, "state"},
    "pipeline": {"upstream", "runtime", *_PEERS, "state"},
    "telemetry": {"upstream", "runtime", *_PEERS, "state"},
    "upstream": {*_PEERS, "state"},
    "runtime": {*_PEERS, "state"},
    "catalog": {"state"},
    "cache": {"state"},
    "knowledge": {"state"},
    "media": {"state"},
    "accounting": {"state"},
    "state": set(),
}
APART = ("services", "http.routes")  # packages whose modules do not import one another

# Upward or sideways edges of today's code, (importer, imported) relative to tiqo.daemon: debts to pay, not rules.
DEBTS: dict[tuple[str, str], str] = {}

# The project's layers (DESIGN.md, "Layers"): package -> the tiqo packages it may import (tiqo itself, the version,
# is open to all).
PROJECT_MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "protocol": {"core"},
    "policy": {"core", "protocol"},
    "sdk": {"core", "protocol"},
    "daemon": {"core", "protocol", "policy", "sdk"},
    "client": {"core", "protocol"},
    "present": {"core"},  # plain-text renderings of API rows, shared by the CLI and the dashboard
    "cli": {"client", "protocol", "core", "present", "tui"},  # `tiqo dash` starts the TUI
    "tui": {"client", "protocol", "core", "present"},
}
PROJECT_DEBTS: dict[tuple[str, str], str] = {}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module(p): p for p in sorted(TIQO.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(modules: dict[str, Path]) -> Iterator[tuple[str, str, str]]:
    """(importer, imported module, file:line) for every import of a tiqo module, at any depth of the code."""
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{where}: relative import; tiqo imports absolutely"
                base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for name in sorted(set(names)):
                if name == "tiqo" or name.startswith("tiqo."):
                    yield module, name, where


def _short(module: str, prefix: str) -> str:
    return module.removeprefix(prefix + ".") if module.startswith(prefix + ".") else ""


def _daemon_package(short: str) -> str:
    return short.split(".")[0]


def _daemon_edges() -> tuple[list[str], set[tuple[str, str]]]:
    """Broken rules not in DEBTS (as messages) and every edge that breaks a rule (debts included)."""
    problems: list[str] = []
    broken: set[tuple[str, str]] = set()
    for importer, imported, where in _imports(_sources()):
        src, dst = _short(importer, "tiqo.daemon"), _short(imported, "tiqo.daemon")
        if not src or not dst:
            continue
        src_pkg, dst_pkg = _daemon_package(src), _daemon_package(dst)
        src_parent, dst_parent = src.rpartition(".")[0], dst.rpartition(".")[0]
        if src_pkg != dst_pkg and dst_pkg not in MAY_IMPORT[src_pkg]:
            why = f"{src_pkg} may import only {', '.join(sorted(MAY_IMPORT[src_pkg])) or 'itself'}"
        elif src_parent in APART and dst_parent == src_parent and dst != src:
            why = f"the modules of {src_parent}/ do not import one another"
        else:
            continue
        broken.add((src, dst))
        if (src, dst) not in DEBTS:
            problems.append(f"{where}: {src} imports {dst} ({why})")
    return problems, broken


def test_every_daemon_module_sits_in_a_layer() -> None:
    stray = [
        m
        for m in _sources()
        if _short(m, "tiqo.daemon") and _daemon_package(_short(m, "tiqo.daemon")) not in MAY_IMPORT
    ]
    assert stray == [], f"give these a package listed in MAY_IMPORT (or add the package to it): {stray}"


def test_daemon_imports_point_down() -> None:
    problems, _ = _daemon_edges()
    assert problems == [], "imports that point up or sideways:\n" + "\n".join(problems)


def test_daemon_debts_are_still_owed() -> None:
    _, broken = _daemon_edges()
    paid = sorted(set(DEBTS) - broken)
    assert paid == [], f"paid, strike them from DEBTS: {paid}"


def _project_edges() -> tuple[list[str], set[tuple[str, str]]]:
    problems: list[str] = []
    broken: set[tuple[str, str]] = set()
    for importer, imported, where in _imports(_sources()):
        src, dst = _short(importer, "tiqo"), _short(imported, "tiqo")
        if not src or not dst or src.split(".")[0] not in PROJECT_MAY_IMPORT:
            continue  # tiqo itself (the version) and tiqo/__main__.py (python -m tiqo)
        src_pkg, dst_pkg = src.split(".")[0], dst.split(".")[0]
        if src_pkg == dst_pkg or dst_pkg in PROJECT_MAY_IMPORT[src_pkg]:
            continue
        broken.add((src, dst))
        if (src, dst) not in PROJECT_DEBTS:
            allowed = ", ".join(sorted(PROJECT_MAY_IMPORT[src_pkg])) or "nothing else of tiqo"
            problems.append(f"{where}: tiqo.{src} imports tiqo.{dst} (tiqo.{src_pkg} may import {allowed})")
    return problems, broken


def test_project_layers_hold() -> None:
    problems, broken = _project_edges()
    assert problems == [], "imports across the project's layers:\n" + "\n".join(problems)
    paid = sorted(set(PROJECT_DEBTS) - broken)
    assert paid == [], f"paid, strike them from PROJECT_DEBTS: {paid}"
