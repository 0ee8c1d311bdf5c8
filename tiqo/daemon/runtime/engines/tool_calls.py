"""Tool calls on local models, for chat templates without a tools section (SmolLM2's has none).

The convention, the same in the prompt, in the grammar and in the history:

* a system turn lists the functions (name, description, parameters as JSON Schema) and says how to call them;
* a call is the answer ``{"tool_calls": [{"name": NAME, "arguments": {...}}, ...]}`` and nothing else; a grammar
  built from the declared functions makes it one: with ``tool_choice`` ``required`` or a named function the answer
  can only be that JSON; with ``auto`` it is that JSON or plain text (text may not start with ``{``);
* the call is validated (each ``arguments`` against its function's ``parameters``) and returned in OpenAI's shape:
  ``message.tool_calls`` with ids, ``finish_reason: tool_calls``; streamed, one delta with the id, type and name and
  one with the arguments per call, once the whole call validated (text in ``auto`` streams as it comes);
* earlier assistant calls in the history are written back in the same JSON, and ``tool`` results as ``tool`` turns.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tiqo.core.errors import BadRequest
from tiqo.daemon.runtime.engines.json_output import CompiledFormat, check, check_answer, compiled
from tiqo.protocol.openai import JsonFormat, ToolUse, plain_call
from tiqo.sdk.engine import Piece

MAX_PARALLEL = 4  # calls in one answer when parallel_tool_calls is on
_ROOT = re.compile(r"^root ::=", re.M)
# auto: a call, or text that does not open with "{" (after any whitespace)
_CALL_OR_TEXT = "\nroot ::= tiqo-call | tiqo-text\ntiqo-text ::= [ \\t\\n]* [^{ \\t\\n] [^\\x00]*\n"


@dataclass(frozen=True)
class CompiledCalls:
    made: CompiledFormat  # the call's JSON: grammar and validator
    gbnf: str  # the grammar to decode with (in auto: a call or text)
    instruction: str
    auto: bool


def compiled_calls(use: ToolUse, check_grammar: Any) -> CompiledCalls:
    """The grammar, validator and instruction for ``use`` (each function's parameters checked first, so a 400 names
    the tool). Blocking: call it off the event loop."""
    for i, function in enumerate(use.functions):
        check(function.parameters, f"tools[{i}].function.parameters")
    made = compiled(JsonFormat(call_schema(use), name="tool_calls"), check_grammar, "tools")
    gbnf = made.gbnf
    if not use.required:
        gbnf = _ROOT.sub("tiqo-call ::=", gbnf, count=1) + _CALL_OR_TEXT
        check_grammar(gbnf)
    return CompiledCalls(made, gbnf, instruction(use), auto=not use.required)


def call_schema(use: ToolUse) -> dict[str, Any]:
    """The JSON Schema of an answer that calls functions of ``use`` (their ``$defs`` lifted to the top)."""
    defs: dict[str, Any] = {}
    variants = []
    for i, function in enumerate(use.functions):
        if function.name not in {f.name for f in use.callable()}:
            continue
        parameters = _lift_defs(function.parameters, f"f{i}-", defs)
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": function.name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    calls = {
        "type": "array",
        "items": variants[0] if len(variants) == 1 else {"anyOf": variants},
        "minItems": 1,
        "maxItems": MAX_PARALLEL if use.parallel else 1,
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    return {**schema, "$defs": defs} if defs else schema


def _lift_defs(parameters: dict[str, Any], prefix: str, defs: dict[str, Any]) -> Any:
    """``parameters`` without its ``$defs`` (moved into ``defs`` under ``prefix``) and its refs pointing there."""
    for name, sub in (parameters.get("$defs") or {}).items():
        defs[prefix + name] = _retarget(sub, prefix)
    return _retarget({k: v for k, v in parameters.items() if k != "$defs"}, prefix)


def _retarget(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_retarget(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _retarget(v, prefix) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        out["$ref"] = "#/$defs/" + prefix + ref.removeprefix("#/$defs/")
    elif isinstance(ref, str):
        raise BadRequest(f"tool parameters may only refer to their own $defs, not {ref!r}", param="tools")
    return out


def instruction(use: ToolUse) -> str:
    lines = ["You can call these functions:"]
    for function in use.callable():
        parameters = json.dumps(function.parameters, separators=(",", ":"), ensure_ascii=False)
        lines.append(
            f"- {function.name}: {function.description} Arguments (JSON Schema): {parameters}".replace("  ", " ")
        )
    lines.append('To call functions, reply with only this JSON: {"tool_calls": [{"name": NAME, "arguments": {...}}]}')
    if use.only is not None:
        lines.append(f"Reply with a call of {use.only}.")
    elif use.required:
        lines.append("Reply with a function call.")
    else:
        lines.append("If no function is needed, reply in plain text.")
    return "\n".join(lines)


def history(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Earlier assistant calls (``tool_calls``: OpenAI's list as JSON text) written as the model writes them."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            written = [plain_call(call) for call in json.loads(calls)]
            text = json.dumps({"tool_calls": written}, ensure_ascii=False)
            message = {"role": message["role"], "content": f"{message['content']}\n{text}".strip()}
        out.append(message)
    return out


def as_calls(pieces: Iterator[Piece], calls: CompiledCalls, max_tokens: int | None) -> Iterator[Piece]:
    """The decoded pieces as OpenAI tool calls, or (``auto``) as text when the answer does not open a call."""
    held: list[str] = []
    is_call = None if calls.auto else True
    for piece in pieces:
        if piece.finish_reason is not None:
            if is_call and piece.finish_reason != "cancelled":
                yield from _calls(check_answer("".join(held), piece.finish_reason, calls.made, max_tokens))
                piece = Piece("", "tool_calls", piece.prompt_tokens, piece.completion_tokens)
            elif held and not is_call:
                yield Piece("".join(held))
            yield piece
            return
        if is_call is False:
            yield piece
            continue
        held.append(piece.text)
        opened = "".join(held).lstrip()
        if is_call is None and opened:
            is_call = opened.startswith("{")
            if not is_call:
                yield Piece("".join(held))
                held.clear()


def _calls(value: dict[str, Any]) -> Iterator[Piece]:
    for index, call in enumerate(value["tool_calls"]):
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        head = {"index": index, "id": "call_" + uuid.uuid4().hex[:24], "type": "function"}
        yield Piece("", tool_calls=[{**head, "function": {"name": call["name"], "arguments": ""}}])
        yield Piece("", tool_calls=[{"index": index, "function": {"arguments": arguments}}])
