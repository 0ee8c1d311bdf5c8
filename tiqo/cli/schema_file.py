"""``--schema FILE``: a JSON Schema file as OpenAI's ``response_format`` (shared by ``tiqo ask`` and ``tiqo route
explain``). The daemon checks and enforces the schema; the CLI only reads the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from tiqo.cli.output import EXIT_USAGE, fail

SCHEMA = typer.Option(
    None,
    "--schema",
    help="Answer with JSON that validates against this JSON Schema file (or OpenAI's json_schema object: "
    "name, schema, strict).",
    exists=True,
    dir_okay=False,
    readable=True,
)


def response_format(path: Path) -> dict[str, Any]:
    """``{"type": "json_schema", "json_schema": {...}}`` from a file holding a JSON Schema, or OpenAI's whole
    ``json_schema`` object (``name`` and ``schema``); a file that is not a JSON object is a usage error."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"{path}: not a JSON file ({exc})", "--schema takes a JSON Schema, e.g. schema.json", EXIT_USAGE)
    if not isinstance(loaded, dict):
        fail(f"{path}: a JSON Schema is a JSON object", '{"type": "object", "properties": {...}}', EXIT_USAGE)
    if isinstance(loaded.get("schema"), dict) and isinstance(loaded.get("name"), str):
        return {"type": "json_schema", "json_schema": loaded}
    name = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": loaded, "strict": True}}
