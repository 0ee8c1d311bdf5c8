"""``tiqo embed``: text to vectors (JSON), one per argument, per stdin, or per stdin line."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from tiqo.cli import complete
from tiqo.cli.ask import DATA_CLASS, TIER, USER, routing_headers
from tiqo.cli.output import EXIT_USAGE, client, fail, handle_errors

BATCH = 256


@handle_errors
def embed(
    text: Optional[str] = typer.Argument(None, help="Text to embed; - or nothing reads stdin."),
    lines: bool = typer.Option(False, "--lines", "-l", help="One input per line of stdin (or of TEXT)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Embedding model; default embed.default_model.", autocompletion=complete.models
    ),
    dimensions: Optional[int] = typer.Option(None, "--dimensions", help="Vector size, where the model allows."),
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
) -> None:
    """Embed text as vectors. Prints one JSON object per input: {"index", "model", "embedding"}.

    Example: tiqo embed "The cat sat on the mat."
    Example: cut -f2 titles.tsv | tiqo embed --lines > vectors.jsonl
    """
    if text is None or text == "-":
        if sys.stdin.isatty():
            fail("no text to embed", 'give it (tiqo embed "some text") or pipe it in', EXIT_USAGE)
        text = sys.stdin.read()
    inputs = [line for line in text.splitlines() if line.strip()] if lines else [text]
    if not inputs or not any(t.strip() for t in inputs):
        fail("nothing to embed: the input is empty", 'give it some text: tiqo embed "hello"', EXIT_USAGE)
    headers = routing_headers(user, tier, data_class)
    with client() as c:
        for start in range(0, len(inputs), BATCH):
            answer = c.embed(inputs[start : start + BATCH], model=model, dimensions=dimensions, headers=headers)
            for item in answer["data"]:
                row = {"index": start + item["index"], "model": answer["model"], "embedding": item["embedding"]}
                sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
            sys.stdout.flush()
