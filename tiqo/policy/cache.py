"""Exact response cache: canonical keys, scopes and which requests may be cached. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Fields that change how an answer is delivered or accounted, not what it says.
_NOT_SEMANTIC = frozenset({"stream", "stream_options", "keep_alive", "user", "model", "metadata", "store"})
CACHE_MODES = ("off", "deterministic", "all")
CONTROL = ("use", "refresh", "off")  # x-tiqo-cache: read+write (default), write only, neither


def canonical_request(body: Mapping[str, Any]) -> str:
    """The request as stable JSON: sorted keys, no delivery-only fields, no nulls."""
    cleaned = {k: v for k, v in body.items() if k not in _NOT_SEMANTIC and v is not None and not k.startswith("tiqo")}
    return json.dumps(cleaned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def scope_for(data_class: str, user: str) -> str:
    """Restricted answers are cached only for the same user; everything else shares one scope per class."""
    return f"restricted:{user}" if data_class == "restricted" else data_class


def cache_key(body: Mapping[str, Any], resolved_model: str, scope: str, endpoint: str = "chat") -> str:
    raw = f"{endpoint}\x00{resolved_model}\x00{scope}\x00{canonical_request(body)}"
    return hashlib.sha256(raw.encode()).hexdigest()


def cacheable(mode: str, body: Mapping[str, Any]) -> bool:
    """``deterministic`` (the default) caches only requests whose answer is reproducible: temperature 0 or a seed."""
    if mode == "off":
        return False
    if mode == "all":
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None
