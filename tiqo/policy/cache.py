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


CACHE_SCOPES = ("user", "all")  # cache.scope: entries per user (the default), or shared by every user of a class


def scope_for(data_class: str, user: str, shared: bool = False) -> str:
    """Whose cached answers a request may read and write: its user's own (``user:NAME:CLASS``), or with ``shared``
    (``cache.scope = all``) every user's of the same data class, except restricted answers: always per user."""
    if shared and data_class != "restricted":
        return data_class
    return f"user:{user}:{data_class}"


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


def _text_of(content: Any) -> str | None:
    """A message's text; None when it carries anything but text (an image is not compared by its caption)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                return None
            texts.append(str(part.get("text") or ""))
        return "\n".join(texts)
    return None


def semantic_parts(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """Split a chat request into (context digest, question) for the semantic cache, or None when it has no place there.

    Only the last message, a user's text, is compared by meaning; everything else (earlier messages, system prompt,
    tools, sampling parameters) has to match exactly, so its canonical form is hashed into the digest."""
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "user":
        return None
    question = _text_of(messages[-1].get("content"))
    if question is None or not question.strip():
        return None
    rest = {**body, "messages": [*messages[:-1], {"role": "user"}]}
    return hashlib.sha256(canonical_request(rest).encode()).hexdigest(), question


def semantic_group(context: str, resolved_model: str, scope: str, embed_model: str) -> str:
    """Entries whose questions may be compared: same answering model, class scope, context and embedding model."""
    raw = f"chat\x00{resolved_model}\x00{scope}\x00{embed_model}\x00{context}"
    return hashlib.sha256(raw.encode()).hexdigest()
