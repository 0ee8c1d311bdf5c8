"""JSON files on the command line: ``--schema FILE`` (a JSON Schema as OpenAI's ``response_format``, for ``tiqo ask``
and ``tiqo route explain``) and ``--tool FILE`` (a function the answer must call). The daemon checks and enforces
them; the CLI only reads the files."""

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


TOOL = typer.Option(
    None,
    "--tool",
    help="Answer by calling a function defined in this JSON file (OpenAI's tool object, or its function: name, "
    "description, parameters); repeat for several. Prints one JSON line per call: name and arguments.",
    exists=True,
    dir_okay=False,
    readable=True,
)


def _load(path: Path, what: str, example: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"{path}: not a JSON file ({exc})", f"{what} takes a JSON file, e.g. {example}", EXIT_USAGE)


def tool(path: Path) -> dict[str, Any]:
    """OpenAI's tool object from a file holding one, or only its ``function`` object."""
    loaded = _load(path, "--tool", '{"name": "add", "parameters": {...}}')
    if not isinstance(loaded, dict):
        fail(
            f"{path}: a tool is a JSON object", '{"name": "add", "description": "...", "parameters": {...}}', EXIT_USAGE
        )
    return loaded if "function" in loaded else {"type": "function", "function": loaded}


def response_format(path: Path) -> dict[str, Any]:
    """``{"type": "json_schema", "json_schema": {...}}`` from a file holding a JSON Schema, or OpenAI's whole
    ``json_schema`` object (``name`` and ``schema``); a file that is not a JSON object is a usage error."""
    loaded = _load(path, "--schema", "schema.json")
    if not isinstance(loaded, dict):
        fail(f"{path}: a JSON Schema is a JSON object", '{"type": "object", "properties": {...}}', EXIT_USAGE)
    if isinstance(loaded.get("schema"), dict) and isinstance(loaded.get("name"), str):
        return {"type": "json_schema", "json_schema": loaded}
    name = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": loaded, "strict": True}}
