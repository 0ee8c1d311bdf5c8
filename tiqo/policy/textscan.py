"""Pattern scans whose time is linear in the text, whatever the pattern and the input.

Classification scans every text a caller sends (up to the body limit) before any rate limit, so a backtracking
engine is a denial of service: with Python's ``re`` the shipped e-mail pattern takes 11 s on ``"a." * 40_000``
(quadratic), and ``\\bSELECT\\b.+\\bFROM\\b`` 8 s on ``"select " * 10_000``, all of it holding the GIL. Patterns
here run on RE2 (google-re2): an automaton, no backtracking, so time grows linearly with the text, and the search
releases the GIL, so a scan in a worker thread leaves the event loop free. Chosen by measurement
(bench/classify_scan.py): RE2 runs the 13 patterns (10 shipped, 3 task markers) over 16 M characters in about
0.5 s, where ``re`` would need days, and the ``regex`` module is quadratic on the SELECT pattern too (its timeout
would only turn a freeze into an arbitrary answer).

RE2 has no look-around, back-references, possessive quantifiers or ``\\Z`` (write ``\\z``): such a pattern fails
to compile, and so does one whose automaton would exceed ``MAX_PATTERN_MEM`` (e.g. ``\\p{L}{1000}`` five times
over). Both are a ``PatternError`` naming the pattern. ``\\b``, ``\\w``, ``\\d`` and ``\\s`` are ASCII-only in RE2.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import re2

ENGINE = "re2"
SYNTAX_URL = "https://github.com/google/re2/wiki/Syntax"
MAX_PATTERN_MEM = 8 << 20  # bytes of compiled program and automaton cache per pattern (RE2's default)
_ENCODE_CHUNK = 1 << 20  # characters encoded at a time: a worker thread yields the GIL between chunks


class PatternError(ValueError):
    """A pattern RE2 cannot run: Python-only syntax (look-around, back-references) or too big an automaton."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"pattern {pattern!r} cannot run on the linear-time engine ({ENGINE}): {reason}")
        self.pattern = pattern
        self.reason = reason


@dataclass(frozen=True)
class ScanPattern:
    """A pattern compiled for RE2. ``search`` takes the UTF-8 bytes of a text (see ``encode``)."""

    source: str
    ignore_case: bool = False
    _regexp: Any = field(default=None, repr=False, compare=False)

    def search(self, data: bytes) -> bool:
        return self._regexp.search(data) is not None


@functools.lru_cache(maxsize=512)
def compile_pattern(source: str, *, ignore_case: bool = False) -> ScanPattern:
    """Compile ``source`` for RE2, or raise ``PatternError`` saying why it cannot run there."""
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False  # the reason goes into PatternError, not to stderr
    options.max_mem = MAX_PATTERN_MEM
    try:
        regexp = re2.compile(source, options)
    except re2.error as exc:
        raise PatternError(source, _reason(exc)) from None
    except UnicodeEncodeError:
        raise PatternError(source, "it is not valid Unicode (a lone surrogate)") from None
    return ScanPattern(source, ignore_case, regexp)


def as_scan_pattern(pattern: str | re.Pattern[str] | ScanPattern) -> ScanPattern:
    """A ``ScanPattern`` for a source string or a compiled ``re`` pattern (its IGNORECASE flag is kept): whatever the
    caller compiled it with, the scan runs on RE2."""
    if isinstance(pattern, ScanPattern):
        return pattern
    if isinstance(pattern, re.Pattern):
        return compile_pattern(pattern.pattern, ignore_case=bool(pattern.flags & re.IGNORECASE))
    return compile_pattern(pattern)


def encode(text: str) -> bytes:
    """The UTF-8 bytes RE2 scans. Lone surrogates (valid in JSON strings) are kept as their 3-byte forms rather than
    raising; encoding goes a chunk at a time so a thread that encodes megabytes lets other threads run between."""
    if len(text) <= _ENCODE_CHUNK:
        return text.encode("utf-8", "surrogatepass")
    return b"".join(
        text[i : i + _ENCODE_CHUNK].encode("utf-8", "surrogatepass") for i in range(0, len(text), _ENCODE_CHUNK)
    )


def _reason(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    if "pattern too large" in text:
        return f"{text} (its automaton would need more than {MAX_PATTERN_MEM >> 20} MiB)"
    return text
