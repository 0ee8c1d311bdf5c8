"""The llama.cpp runner's answers are bounded by max_tokens and counted as what they cost, whatever the caller asks
the sampler to favour. Real SmolLM2 in process; no test asserts the model's words (they differ between CPUs)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import smollm_path
from tiqo.daemon.runtime.engines.llama import LlamaEngine
from tiqo.sdk.engine import GenerationParams, ModelSpec, Piece

N_CTX = 512


@pytest.fixture(scope="module")
def runner() -> Iterator[Any]:
    spec = ModelSpec(name="smollm2", kind="llm", engine="llama.cpp", path=smollm_path(), source="local", size_bytes=0)
    loaded = LlamaEngine().load(spec, {"n_threads": 1, "n_ctx": N_CTX})
    yield loaded
    loaded.close()


def _answer(runner: Any, params: GenerationParams, question: str = "hi") -> tuple[str, Piece]:
    pieces = list(runner.chat([{"role": "user", "content": question}], params, threading.Event()))
    return "".join(p.text for p in pieces), pieces[-1]


def _lead_byte_token(runner: Any) -> int:
    """A token that starts a 4-byte UTF-8 character and never ends it (the first piece of an emoji)."""
    first = runner.llm.tokenize("🌍".encode(), add_bos=False, special=True)[0]
    piece = runner.llm.detokenize([first])
    assert piece.endswith(b"\xf0\x9f"), piece  # a lead byte and one continuation: the character stays open
    return int(first)


def test_an_answer_that_ends_inside_a_character_still_stops_at_max_tokens(runner: Any) -> None:
    """llama-cpp-python skips its max_tokens check while the text ends in an unfinished UTF-8 character: a caller's
    logit_bias toward such a token ran the answer to the end of the context and then failed in llama_decode."""
    lead = _lead_byte_token(runner)
    for max_tokens in (1, 5, 12):
        _, last = _answer(runner, GenerationParams(max_tokens=max_tokens, temperature=0.0, logit_bias={lead: 100.0}))
        assert (last.finish_reason, last.completion_tokens) == ("length", max_tokens)


def test_without_max_tokens_such_an_answer_ends_with_the_context(runner: Any) -> None:
    lead = _lead_byte_token(runner)
    _, last = _answer(runner, GenerationParams(temperature=0.0, logit_bias={lead: 100.0}))
    assert last.finish_reason == "length"
    assert last.completion_tokens == N_CTX - last.prompt_tokens


def test_completion_tokens_never_exceed_max_tokens(runner: Any) -> None:
    """Counted by tokenizing the text again, an answer with an emoji in it came out as 6 tokens for max_tokens 5."""
    lead = _lead_byte_token(runner)
    finishes = set()
    for seed in range(12):
        for bias in (None, {lead: 12.0}):  # a mild bias: emoji pieces among ordinary words
            _, last = _answer(runner, GenerationParams(max_tokens=5, temperature=1.0, seed=seed, logit_bias=bias))
            finishes.add(last.finish_reason)
            assert 0 <= last.completion_tokens <= 5
            if last.finish_reason == "length":
                assert last.completion_tokens == 5
    assert "length" in finishes


def test_a_short_answer_counts_its_own_tokens(runner: Any) -> None:
    _, last = _answer(runner, GenerationParams(max_tokens=200, temperature=0.0), "Say only the word yes.")
    if last.finish_reason == "stop":  # the usual case; greedy words differ between CPUs, so a ramble is allowed
        assert 0 <= last.completion_tokens < 200
    else:
        assert (last.finish_reason, last.completion_tokens) == ("length", 200)
