"""The one fallback rule (tiqo/daemon/pipeline/fallback.py) as a table: every failure an attempt can end with, for a
keyed and a keyless attempt. Chat and completions (services/gateway.py) and embeddings, speech-to-text and
text-to-speech (pipeline/dispatch.py, services/voice.py, services/embeddings.py) all take their next step from it."""

from __future__ import annotations

import ast
from typing import get_args

import pytest

from tests.conftest import ROOT
from tiqo.core.errors import BadRequest, Busy, ContextOverflow, ModelLoadFailed, NotFound, TiqoError
from tiqo.daemon.pipeline.fallback import LOCAL_FALLBACK, after_failure
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.sdk.provider import FailureKind

UPSTREAM = {
    # kind: (with a key, keyless provider)
    "rate_limited": ("key", "candidate"),
    "quota_exhausted": ("key", "candidate"),
    "auth": ("key", "candidate"),
    "server": ("candidate", "candidate"),
    "not_found": ("candidate", "candidate"),
    "bad_request": ("stop", "stop"),
    "timeout": ("candidate", "candidate"),
    "connection": ("candidate", "candidate"),
    "protocol": ("candidate", "candidate"),
    "unsupported": ("candidate", "candidate"),
}
LOCAL = {
    Busy: "candidate",
    ContextOverflow: "candidate",
    ModelLoadFailed: "candidate",
    BadRequest: "stop",
    NotFound: "stop",
    TiqoError: "stop",
}


def test_the_table_covers_every_failure_kind_a_provider_plugin_can_report() -> None:
    assert set(get_args(FailureKind)) <= set(UPSTREAM)


@pytest.mark.parametrize("kind", sorted(UPSTREAM))
def test_upstream_failures(kind: str) -> None:
    keyed, keyless = UPSTREAM[kind]
    exc = AttemptFailed(kind, "x")
    assert (after_failure(exc, "key-1"), after_failure(exc, None)) == (keyed, keyless)


@pytest.mark.parametrize("error", list(LOCAL), ids=lambda e: e.__name__)
def test_local_failures(error: type[TiqoError]) -> None:
    assert after_failure(error("x"), None) == LOCAL[error]
    assert (error in LOCAL_FALLBACK) == (LOCAL[error] == "candidate")


def test_no_modality_keeps_its_own_copy_of_the_rule() -> None:
    """Outside fallback.py no daemon module names the key-level kinds or catches a tuple of local failures itself."""
    found = []
    for path in (ROOT / "tiqo" / "daemon").rglob("*.py"):
        if path.name == "fallback.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "quota_exhausted":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} names quota_exhausted")
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Tuple):
                names = {n.id for n in node.type.elts if isinstance(n, ast.Name)}
                if names & {"Busy", "ModelLoadFailed", "ContextOverflow"}:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} catches its own local-failure tuple")
    assert found == []
