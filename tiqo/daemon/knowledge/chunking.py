"""Split documents into overlapping chunks for the vector store (pure: no I/O, no model).

Chunks break at paragraph boundaries first, then sentences, then words, and cut a word only when it alone is longer
than a chunk. Sizes count characters, or tokens (words and punctuation marks: close to, and never far below, what a
WordPiece tokenizer counts for English prose).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

UNITS = ("chars", "tokens")
MIN_SIZE = {"chars": 64, "tokens": 16}  # smaller chunks carry too little meaning and multiply the embedding work
_PARAGRAPHS = re.compile(r"(?<=\n)\s*\n")  # a blank line ends a paragraph
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+")
_WORDS = re.compile(r"(?<=\s)(?=\S)")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s+")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _measure(unit: str) -> Callable[[str], int]:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    return len if unit == "chars" else count_tokens


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Split ``text`` after each match, keeping the separators (the pieces join back to ``text``)."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start:
            pieces.append(text[start : m.end()])
            start = m.end()
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _hard_cut(text: str, size: int, measure: Callable[[str], int]) -> list[str]:
    if measure is len:
        return [text[i : i + size] for i in range(0, len(text), size)]
    tokens = list(_TOKEN.finditer(text))
    cuts = [tokens[i].start() for i in range(size, len(tokens), size)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def units(text: str, size: int, measure: Callable[[str], int] = len) -> list[str]:
    """Pieces of ``text``, each at most ``size`` long, as large as the boundaries allow (they join back to text)."""
    out: list[str] = []
    for para in _split_keep(text, _PARAGRAPHS):
        if measure(para) <= size:
            out.append(para)
            continue
        for sentence in _split_keep(para, _SENTENCES):
            if measure(sentence) <= size:
                out.append(sentence)
                continue
            for word in _split_keep(sentence, _WORDS):
                out.extend([word] if measure(word) <= size else _hard_cut(word, size, measure))
    return out


class TooManyChunks(ValueError):
    """The text makes more chunks than allowed (raised as soon as that is known, before chunking all of it)."""


def check_params(size: int, overlap: int, unit: str) -> None:
    """Reject chunking parameters a request may not use: a chunk below ``MIN_SIZE`` or an overlap not below it."""
    _measure(unit)
    if size < MIN_SIZE[unit]:
        raise ValueError(f"chunk size {size} is below the minimum of {MIN_SIZE[unit]} {unit}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap {overlap} must be at least 0 and smaller than the chunk size ({size})")


def min_chunks(text: str, size: int, unit: str = "chars") -> int:
    """A lower bound on how many chunks ``text`` makes at ``size``, in one linear pass with no allocation per word:
    chunks cover every non-space character (every token), and each holds at most ``size`` of them."""
    total = _TOKEN.subn("", text)[1] if unit == "tokens" else len(_SPACE.sub("", text))  # counted in C
    return -(-total // size)


def chunk_text(
    text: str, size: int = 1000, overlap: int = 200, unit: str = "chars", max_chunks: int | None = None
) -> list[str]:
    """Chunks of at most ``size`` (chars or tokens); each repeats up to ``overlap`` of the previous one's end, in
    whole sentences or words. Empty and whitespace-only text gives no chunks. More than ``max_chunks`` raises
    ``TooManyChunks`` (checked against a lower bound first, so a hopeless text is refused without chunking it)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    if not 0 <= overlap < size:
        raise ValueError("chunk overlap must be at least 0 and smaller than the chunk size")
    measure = _measure(unit)
    if max_chunks is not None and min_chunks(text, size, unit) > max_chunks:
        raise TooManyChunks(f"more than {max_chunks} chunks")
    pieces = units(text, size, measure)
    lengths = [measure(p) for p in pieces]
    chunks: list[str] = []
    i, n = 0, len(pieces)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or total + lengths[j] <= size):
            total += lengths[j]
            j += 1
        chunk = "".join(pieces[i:j]).strip()
        if chunk:
            chunks.append(chunk)
            if max_chunks is not None and len(chunks) > max_chunks:
                raise TooManyChunks(f"more than {max_chunks} chunks")
        if j >= n:
            break
        k, carried = j, 0  # step back over whole pieces that fit in the overlap, always moving forward
        while k - 1 > i and carried + lengths[k - 1] <= overlap:
            k -= 1
            carried += lengths[k]
        i = k
    return chunks
