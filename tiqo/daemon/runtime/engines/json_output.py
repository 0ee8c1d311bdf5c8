"""JSON answers on local engines: which JSON Schemas a grammar can enforce, compiling them (cached per schema),
the instruction added to the prompt, and validating the finished answer.

llama-cpp-python's converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``) silently drops keywords it does not
know (``minimum``, ``uniqueItems``, ``not``, most formats, ...), which would give an unconstrained answer where the
caller asked for a constrained one. So every schema is read here first: a keyword the grammar cannot enforce is a 400
naming it and where it is. One gap is filled: an integer bounded on both sides by at most ``MAX_INT_RANGE`` values
becomes an ``enum`` for the converter. Whatever the grammar enforces, the answer is validated with ``jsonschema``
against the schema as sent before it is returned: a cut-off or invalid answer is an error, never a success.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tiqo.core.errors import BadRequest, Unprocessable
from tiqo.protocol.openai import JsonFormat
from tiqo.sdk.engine import Piece

SCHEMA_PARAM = "response_format.json_schema.schema"
MAX_INT_RANGE = 256  # integer bounds become an enum of at most this many values
CACHE_SIZE = 64  # compiled schemas kept (grammar + validator)

ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# What the converter enforces, by the keyword that selects its branch; anything else beside them is dropped by it.
_BY_BRANCH: dict[str, frozenset[str]] = {
    "$ref": frozenset({"$ref"}),
    "anyOf": frozenset({"anyOf"}),
    "oneOf": frozenset({"oneOf"}),
    "type": frozenset({"type"}),  # a list of types
    "const": frozenset({"const", "type"}),
    "enum": frozenset({"enum", "type"}),
}
_STRUCTURE = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems"}
)
_LENGTHS = frozenset({"minLength", "maxLength"})
_STRING = frozenset({"pattern", "format"}) | _LENGTHS
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_DEFS = ("$defs", "definitions")
_NAMED = ("properties", *_DEFS)  # maps of name -> subschema
_SUBSCHEMAS = ("items", "prefixItems", "additionalProperties", "anyOf", "oneOf")  # a subschema or a list of them
ANY_TYPES = ("object", "array", "string", "number", "boolean", "null")
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})


@dataclass(frozen=True)
class CompiledFormat:
    """A schema ready to use: the grammar (GBNF text), the validator and what the model is told."""

    gbnf: str
    validator: Any
    instruction: str


# ------------------------------------------------------------------ which schemas a grammar can enforce
def unsupported(schema: dict[str, Any]) -> list[str]:
    """Every keyword the grammar cannot enforce, as ``keyword at /json/pointer`` (empty: all of it is enforced)."""
    return list(_unsupported(schema, ""))


def _unsupported(node: Any, at: str) -> Iterator[str]:
    if not isinstance(node, dict):
        return
    keywords = set(node) - ANNOTATIONS - set(_DEFS)
    branch = _branch(node)
    allowed = _BY_BRANCH[branch] if branch else _STRUCTURE | _STRING | _int_bounds(node)
    for keyword in sorted(keywords - allowed):
        yield f"{keyword} at {at or '/'}" + _why(keyword, node, branch)
    if branch is None:
        yield from _unsupported_combinations(node, at or "/")
    for path, child in _children(node):
        yield from _unsupported(child, f"{at}/{path}")


def _branch(node: dict[str, Any]) -> str | None:
    """The keyword that decides how the converter reads ``node`` (in its order); None: by type and structure."""
    for keyword in ("$ref", "oneOf", "anyOf"):
        if keyword in node:
            return keyword
    if isinstance(node.get("type"), list):
        return "type"
    return next((k for k in ("const", "enum") if k in node), None)


def _why(keyword: str, node: dict[str, Any], branch: str | None) -> str:
    if branch is not None:
        return f" (beside {'a list of types' if branch == 'type' else branch})"
    if keyword in _BOUNDS and node.get("type") == "integer":
        return f" (integer bounds need both a lower and an upper one, at most {MAX_INT_RANGE} values apart)"
    return ""


def _unsupported_combinations(node: dict[str, Any], where: str) -> Iterator[str]:
    """Keywords the converter knows one at a time but drops in combination, and values it does not enforce."""
    if node.get("format") is not None and node["format"] not in FORMATS:
        yield f"format {node['format']!r} at {where} (enforced formats: {', '.join(sorted(FORMATS))})"
    pattern = node.get("pattern")
    if isinstance(pattern, str) and not (pattern.startswith("^") and pattern.endswith("$")):
        yield f"pattern {pattern!r} at {where} (only patterns anchored with ^...$)"
    string_rules = [k for k in ("pattern", "format") if k in node] + (
        ["minLength/maxLength"] if _LENGTHS & set(node) else []
    )
    if len(string_rules) > 1:
        yield f"{' with '.join(string_rules)} at {where} (one of them per string)"
    if (_LENGTHS & set(node)) and node.get("type") != "string":
        yield f"minLength/maxLength at {where} (only with type string)"
    items = node.get("items", node.get("prefixItems"))
    if ({"minItems", "maxItems"} & set(node)) and not isinstance(items, dict):
        yield f"minItems/maxItems at {where} (only with one items schema)"
    properties: dict[str, Any] = node["properties"] if isinstance(node.get("properties"), dict) else {}
    for name in node.get("required") or []:
        if name not in properties:
            yield f"required {name!r} at {where} (not among its properties)"


def _children(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for keyword in _NAMED:
        if isinstance(node.get(keyword), dict):
            for name, child in node[keyword].items():
                yield f"{keyword}/{name}", child
    for keyword in _SUBSCHEMAS:
        if isinstance(node.get(keyword), dict):
            yield keyword, node[keyword]
        elif isinstance(node.get(keyword), list):
            for i, child in enumerate(node[keyword]):
                yield f"{keyword}/{i}", child


def _int_range(node: dict[str, Any]) -> tuple[int, int] | None:
    """The inclusive bounds of an integer schema bounded on both sides, when they are close enough for an enum."""
    if node.get("type") != "integer" or "enum" in node or "const" in node:
        return None
    low = _bound(node, "minimum", "exclusiveMinimum", lower=True)
    high = _bound(node, "maximum", "exclusiveMaximum", lower=False)
    if low is None or high is None or not 0 <= high - low < MAX_INT_RANGE:
        return None
    return low, high


def _bound(node: dict[str, Any], inclusive: str, exclusive: str, lower: bool) -> int | None:
    """The tightest integer bound of one side (``lower``: the smallest integer allowed, else the largest)."""
    found: list[int] = []
    if _is_number(node.get(inclusive)):
        found.append(math.ceil(node[inclusive]) if lower else math.floor(node[inclusive]))
    if _is_number(node.get(exclusive)):
        found.append(math.floor(node[exclusive]) + 1 if lower else math.ceil(node[exclusive]) - 1)
    if not found:
        return None
    return max(found) if lower else min(found)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_bounds(node: dict[str, Any]) -> frozenset[str]:
    return frozenset(k for k in _BOUNDS if k in node) if _int_range(node) is not None else frozenset()


def for_grammar(node: Any) -> Any:
    """The schema as the converter should see it: without annotations, bounded integers as enums, and an empty
    schema as any JSON value (the converter would read it as any object)."""
    if not isinstance(node, dict):
        return node
    bounds = _int_range(node)
    if bounds is not None:
        return {"type": "integer", "enum": list(range(bounds[0], bounds[1] + 1))}
    kept: dict[str, Any] = {}
    for keyword, value in node.items():
        if keyword in ANNOTATIONS:
            continue
        if keyword in _NAMED and isinstance(value, dict):
            kept[keyword] = {name: for_grammar(child) for name, child in value.items()}
        elif keyword in _SUBSCHEMAS:
            kept[keyword] = [for_grammar(c) for c in value] if isinstance(value, list) else for_grammar(value)
        else:
            kept[keyword] = value
    return kept or {"type": list(ANY_TYPES)}


# ------------------------------------------------------------------ compiling, cached per schema
_cache: OrderedDict[str, CompiledFormat] = OrderedDict()
_cache_lock = threading.Lock()


def compiled(fmt: JsonFormat, check_grammar: Any = None, param: str = SCHEMA_PARAM) -> CompiledFormat:
    """``fmt`` compiled (from the cache when it was before). Blocking: call it off the event loop. ``check_grammar``
    (GBNF text → None, or raises) lets the engine reject a grammar its parser would refuse; ``param`` is the field
    errors name."""
    key = fmt.key()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    made = _compile(fmt, check_grammar, param)
    with _cache_lock:
        _cache[key] = made
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return made


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _compile(fmt: JsonFormat, check_grammar: Any, param: str) -> CompiledFormat:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = fmt.schema if fmt.schema is not None else {"type": "object"}
    validator = check(schema, param)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(for_grammar(schema)))
        if check_grammar is not None:
            check_grammar(gbnf)
    except (ValueError, KeyError, AssertionError, RecursionError) as exc:
        raise BadRequest(
            f"this JSON Schema cannot be turned into a grammar: {exc}", param=param, code="unsupported_schema"
        ) from None
    return CompiledFormat(gbnf, validator, instruction(fmt))


def check(schema: dict[str, Any], param: str) -> Any:
    """The validator of ``schema``; a 400 naming ``param`` when it is not JSON Schema or not all enforceable."""
    from jsonschema import SchemaError, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise BadRequest(
            f"{param} is not a valid JSON Schema: {exc.message}" + (f" (at /{path})" if path else ""),
            param=param,
            code="invalid_schema",
        ) from None
    missing = unsupported(schema)
    if missing:
        raise BadRequest(
            "this JSON Schema uses features local constrained decoding cannot enforce: " + "; ".join(missing),
            param=param,
            code="unsupported_schema",
            hint="drop or rewrite them (e.g. an enum instead of a range), or send the request to a provider model",
        )
    return cls(schema)


# ------------------------------------------------------------------ the prompt and the answer
def instruction(fmt: JsonFormat) -> str:
    """What the model is told (a system turn): the grammar makes the shape certain, this makes the values sensible."""
    if fmt.schema is None:
        return "Reply with a single JSON object and nothing else."
    schema = json.dumps(fmt.schema, separators=(",", ":"), ensure_ascii=False)
    return f"Reply with a single JSON value and nothing else. It must match this JSON Schema:\n{schema}"


def instruct(messages: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """``messages`` with ``text`` added to the first system turn (or as a new first one)."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def checked(pieces: Iterator[Piece], made: CompiledFormat, max_tokens: int | None) -> Iterator[Piece]:
    """``pieces`` as they come, the last one only once the whole answer validates (else the 422 is raised there)."""
    text: list[str] = []
    for piece in pieces:
        if piece.finish_reason is not None and piece.finish_reason != "cancelled":
            check_answer("".join(text), piece.finish_reason, made, max_tokens)
        text.append(piece.text)
        yield piece


def check_answer(text: str, finish: str, made: CompiledFormat, max_tokens: int | None) -> Any:
    """The JSON value of ``text``; a 422 unless it is JSON that validates (a cut-off one says how to get it whole)."""
    try:
        value = json.loads(text)
    except ValueError:
        if finish == "length":
            raise Unprocessable(
                f"the answer was cut off after max_tokens={max_tokens} tokens, inside the JSON",
                code="json_truncated",
                param="max_tokens",
                hint="raise max_tokens (or max_completion_tokens), or ask for a smaller object",
            ) from None
        raise _invalid(f"the answer is not JSON: {text[:80]!r}") from None
    error = next(iter(made.validator.iter_errors(value)), None)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path)
        raise _invalid(f"the answer does not match the schema: {error.message}" + (f" (at /{path})" if path else ""))
    return value


def _invalid(message: str) -> Unprocessable:
    return Unprocessable(
        message,
        code="json_invalid",
        hint="the grammar enforces the schema's shape but not every keyword: simplify the schema, or retry",
    )
