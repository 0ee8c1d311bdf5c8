"""OpenAI tool-call deltas merged into whole calls: what a cached answer keeps and what a non-streamed answer returns.

Pure, and below the cache so that the cache, the pipeline and the routes may all import it."""

from __future__ import annotations

from typing import Any


def merge_tool_calls(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool-call deltas (by index, arguments in fragments) → complete tool calls."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        idx = int(d.get("index", 0))
        call = calls.setdefault(idx, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] = fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]
    return [calls[i] for i in sorted(calls)]
