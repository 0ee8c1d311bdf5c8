"""Grammar-constrained sampling for llama-cpp-python that checks the likeliest tokens first.

llama-cpp-python puts a grammar in its sampler chain as is: every step, llama.cpp matches all the vocabulary's
tokens (49,152 for SmolLM2) against the grammar, which halved decode speed here (bench/json_output.py). llama.cpp's
own sampler (common/sampling) avoids that by trying the likeliest tokens first; this does the same as a logits
processor: the ``TOP`` highest-scoring tokens are matched, and when one of them fits, every token outside that set is
masked; only when none fits is the whole vocabulary matched. Greedy decoding picks the same token either way (the
best token that fits is among the top ones whenever any of them fits); sampling with temperature draws from the
tokens that fit among the top ones, as top-k (40 by default) would keep them anyway.

Imported by the llama.cpp engine when a request needs a grammar (numpy and llama_cpp are loaded with the model).
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import llama_cpp
import numpy as np

TOP = 64  # tokens matched before the whole vocabulary is
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class _Candidates:
    """A llama_token_data_array of up to ``size`` tokens, with a numpy view of its entries."""

    def __init__(self, size: int) -> None:
        self.buffer = (llama_cpp.llama_token_data * size)()
        self.view: Any = np.frombuffer(cast(Any, self.buffer), dtype=_TOKEN_DATA)
        self.array = llama_cpp.llama_token_data_array(data=self.buffer, size=size, selected=-1, sorted=False)

    def fill(self, ids: Any, logits: Any) -> None:
        self.view["id"], self.view["logit"], self.view["p"] = ids, logits, 0.0
        self.array.size, self.array.selected, self.array.sorted = len(ids), -1, False


class GrammarProcessor:
    """A logits processor (``create_completion(logits_processor=[...])``) that holds llama.cpp's grammar state for one
    generation; ``close()`` frees it."""

    def __init__(self, vocab: Any, gbnf: str) -> None:
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self.sampler:
            raise ValueError("llama.cpp's grammar parser refused the grammar")
        self._prompt: int | None = None  # tokens before the first generated one
        self._accepted = 0
        self._top = _Candidates(TOP)
        self._all: _Candidates | None = None
        self.full_matches = 0  # steps where no top token fitted (for the bench)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._catch_up(input_ids)
        top = np.argpartition(scores, -TOP)[-TOP:] if len(scores) > TOP else np.arange(len(scores))
        self._top.fill(top, scores[top])
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self._top.array))
        fits = np.isfinite(self._top.view["logit"][: len(top)])
        if fits.any():
            masked = np.full_like(scores, -np.inf)
            masked[top[fits]] = scores[top[fits]]
            return masked
        return self._match_all(scores)

    def _catch_up(self, input_ids: Any) -> None:
        """Advance the grammar over the tokens generated since the last step (``input_ids`` is the whole context)."""
        if self._prompt is None:
            self._prompt = len(input_ids)
            return
        for token in input_ids[self._prompt + self._accepted :]:
            llama_cpp.llama_sampler_accept(self.sampler, int(token))
            self._accepted += 1

    def _match_all(self, scores: Any) -> Any:
        self.full_matches += 1
        if self._all is None:
            self._all = _Candidates(len(scores))
        self._all.fill(np.arange(len(scores)), scores)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self._all.array))
        return self._all.view["logit"].copy()

    def close(self) -> None:
        if self.sampler:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None
