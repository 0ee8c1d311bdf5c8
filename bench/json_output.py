"""What do JSON answers cost on the llama.cpp engine? Grammar compile time (cold and cached) and decode speed with a
grammar against without one, same prompt and same length.

Loads the bundled ``smollm2-135m`` through tiqo's own engine (``LlamaEngine``) in this process, then:

* compile: each schema compiled from an empty cache (cold: the support check, the schema check with ``jsonschema``,
  the GBNF conversion, llama.cpp's parse of the grammar) and again (cached: a hash of the canonical JSON);
* decode: per round and alternating sides, one streamed completion of the same ChatML prompt with the same
  ``max_tokens``, temperature 0: unconstrained; constrained the way tiqo does it (``GrammarProcessor``: the likeliest
  tokens matched first); and constrained by llama-cpp-python's own ``grammar=`` (the whole vocabulary matched every
  step), the reason for the former. The schema leaves room for a long answer (a JSON object with one string of at
  least 1024 characters), so every side runs to ``max_tokens``. Decode speed is (tokens - 1) / (last piece - first
  piece); time to first piece includes setting up the grammar for the request.

Numbers and ratios only, no asserts (the issue's goal: constrained ≥ 0.8x unconstrained).

Run:  .venv/bin/python bench/json_output.py [--rounds 5] [--max-tokens 128] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from llama_cpp.llama_grammar import LlamaGrammar

from tiqo.daemon.catalog.bundled import SMOLLM2, bundled_models
from tiqo.daemon.runtime.engines import json_output as jo
from tiqo.daemon.runtime.engines.grammar_sampler import GrammarProcessor
from tiqo.daemon.runtime.engines.llama import LlamaEngine, LlamaRunner
from tiqo.protocol.openai import JsonFormat

PROMPT = "<|im_start|>user\nRound {i}: Write a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
# minLength keeps the string open past max_tokens (tokens here are ~4 characters), so both sides decode as long
STORY = {"type": "object", "properties": {"story": {"type": "string", "minLength": 1024}}, "required": ["story"]}
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}}, "required": ["x"]}
SCHEMAS: dict[str, dict[str, Any] | None] = {
    "json_object": None,
    "story (one string)": STORY,
    "person (bounded int)": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    },
    "order (nested, enum, array)": {
        "type": "object",
        "properties": {
            "status": {"enum": ["new", "paid", "shipped"]},
            "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}},
            "year": {"anyOf": [{"type": "integer", "minimum": 1900, "maximum": 2030}, {"type": "null"}]},
        },
        "required": ["status", "lines"],
    },
    "segment ($defs, $ref)": {
        "$defs": {"point": POINT},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"],
    },
}


def load(threads: int) -> LlamaRunner:
    spec = next(s for s in bundled_models(Path(tempfile.gettempdir())) if s.name == SMOLLM2)
    return LlamaEngine().load(spec, {"n_threads": threads, "n_ctx": 2048})


def compile_times(runner: LlamaRunner) -> dict[str, dict[str, float]]:
    jo.compiled(JsonFormat({"type": "boolean"}), runner._check_grammar)  # first use: imports jsonschema, llama_cpp
    out: dict[str, dict[str, float]] = {}
    for name, schema in SCHEMAS.items():
        fmt = JsonFormat(schema)
        jo.clear_cache()
        started = time.perf_counter()
        jo.compiled(fmt, runner._check_grammar)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(100):
            jo.compiled(fmt, runner._check_grammar)
        cached = (time.perf_counter() - started) / 100
        out[name] = {"cold_ms": round(cold * 1000, 3), "cached_ms": round(cached * 1000, 4)}
    return out


def decode(runner: LlamaRunner, prompt: str, n: int, side: str, gbnf: str) -> dict[str, float]:
    processor = GrammarProcessor(runner.llm._model.vocab, gbnf) if side == "tiqo" else None
    options: dict[str, Any] = {"logits_processor": [processor]} if processor else {}
    if side == "llama-cpp-python":
        options["grammar"] = LlamaGrammar.from_string(gbnf, verbose=False)
    started = time.perf_counter()
    times: list[float] = []
    text: list[str] = []
    try:
        for chunk in runner.llm.create_completion(prompt, max_tokens=n, temperature=0, seed=1, stream=True, **options):
            piece = chunk["choices"][0].get("text") or ""
            if piece:
                times.append(time.perf_counter())
                text.append(piece)
    finally:
        if processor is not None:
            processor.close()
    tokens = len(runner.llm.tokenize("".join(text).encode(), add_bos=False, special=True))
    rate = (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {"tokens": tokens, "tok_s": rate, "ttft_ms": (times[0] - started) * 1000 if times else 0.0}


SIDES = ("unconstrained", "tiqo", "llama-cpp-python")


def decode_speeds(runner: LlamaRunner, rounds: int, n: int) -> dict[str, Any]:
    gbnf = jo.compiled(JsonFormat(STORY), runner._check_grammar).gbnf
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    decode(runner, PROMPT.format(i="warm-up"), 8, "tiqo", gbnf)
    for i in range(rounds):
        for side in SIDES[i % 2 :] + SIDES[: i % 2]:  # alternate who goes first
            # a prompt of its own per run: no side gets another's prompt from llama.cpp's prefix cache
            runs[side].append(decode(runner, PROMPT.format(i=f"{side} {i}"), n, side, gbnf))
    summary: dict[str, Any] = {
        side: {k: round(statistics.median(r[k] for r in done), 2) for k in ("tokens", "tok_s", "ttft_ms")}
        for side, done in runs.items()
    }
    free = summary["unconstrained"]["tok_s"]
    summary["ratio"] = {side: round(summary[side]["tok_s"] / free, 3) if free else None for side in SIDES[1:]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("tiqo.llama.cpp").setLevel(logging.CRITICAL)  # llama.cpp's own log lines
    runner = load(args.threads)
    try:
        result = {"compile": compile_times(runner), "decode": decode_speeds(runner, args.rounds, args.max_tokens)}
    finally:
        runner.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("grammar compile (cold: check + jsonschema + GBNF + llama.cpp parse; cached: hash lookup)")
    for name, t in result["compile"].items():
        ratio = t["cold_ms"] / t["cached_ms"] if t["cached_ms"] else float("inf")
        print(f"  {name:30} cold {t['cold_ms']:8.3f} ms   cached {t['cached_ms']:8.4f} ms   ({ratio:,.0f}x)")
    d = result["decode"]
    print(f"decode, {args.rounds} rounds, max_tokens {args.max_tokens}, {args.threads} thread(s), medians")
    for side in SIDES:
        r = d[side]
        ratio = f"   {d['ratio'][side]}x unconstrained" if side in d["ratio"] else ""
        speed = f"{r['tok_s']:7.1f} tok/s   {r['tokens']:5.0f} tokens"
        print(f"  {side:17} {speed}   first piece {r['ttft_ms']:7.1f} ms{ratio}")
    print("  goal: constrained >= 0.8x unconstrained")


if __name__ == "__main__":
    main()
