"""Classify a request from cheap signals: task, complexity, data classification. Pure; table-tested.

Every scan runs on RE2 (``tiqo.policy.textscan``): linear in the text whatever it holds, so no request can make
classification slow; texts longer than ``max_scan_chars`` are not scanned for restricted data but classified
restricted (they stay on this machine), never passed unscanned."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tiqo.policy.textscan import ScanPattern, as_scan_pattern, compile_pattern, encode

TASKS = ("chat", "code", "reasoning")
COMPLEXITIES = ("simple", "medium", "complex")
DATA_CLASSES = ("public", "internal", "confidential", "restricted")
MAX_SCAN_CHARS = 8_000_000  # the default of the setting classification.max_scan_chars

_CODE = compile_pattern(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\s*\w*\(|=>|#include|\bimport \w+|\bSELECT\b.+\bFROM\b|"
    r"\b(?:python|javascript|typescript|rust|golang|java|c\+\+|sql|bash|regex|refactor|debug|compile|"
    r"stack ?trace|traceback|unit tests?|function|code)\b",
    ignore_case=True,
)
_MATH = compile_pattern(
    r"\b(?:prove|proof|theorem|lemma|integral|derivative|equation|solve for|probability|optimi[sz]e)\b|"
    r"[∑∫√≤≥]|\d\s*[\^*/]\s*\d",
    ignore_case=True,
)
_ANALYSIS = compile_pattern(
    r"\b(?:analy[sz]e|analysis|compare|contrast|trade-?offs?|step by step|explain why|evaluate|critique|design|"
    r"architecture|strategy|pros and cons|in depth|detailed|comprehensive|essay|report)\b",
    ignore_case=True,
)


@dataclass(frozen=True)
class Thresholds:
    """Where simple ends and complex begins (characters of user-visible input; requested output tokens)."""

    simple_chars: int = 400
    complex_chars: int = 4000
    complex_max_tokens: int = 2000


@dataclass(frozen=True)
class Classification:
    task: str
    complexity: str
    data_class: str
    user: str
    tier: str
    signals: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {
            "task": self.task,
            "complexity": self.complexity,
            "data_class": self.data_class,
            "user": self.user,
            "tier": self.tier,
            "signals": list(self.signals),
        }


def classify(
    texts: Sequence[str],
    *,
    has_tools: bool = False,
    max_tokens: int | None = None,
    data_class: str | None = None,
    default_class: str = "internal",
    restricted_patterns: Sequence[ScanPattern | re.Pattern[str] | str] = (),
    user: str = "local",
    tier: str = "default",
    task: str | None = None,
    thresholds: Thresholds = Thresholds(),
    max_scan_chars: int = MAX_SCAN_CHARS,
    scan: Sequence[str] | None = None,
    min_class: str | None = None,
) -> Classification:
    """``texts`` are the user-visible message contents (system and user turns): task and complexity come from them.
    ``scan`` is every text that would leave the machine (``tiqo.policy.outbound``; default: ``texts``): the
    restricted patterns read all of it. Explicit ``task``/``data_class`` win, except that the data class is never
    below ``min_class`` (the user's own, from ``[users.NAME]``) nor below what the patterns find: a caller may raise
    its class, never lower it.

    Scans at most ``max_scan_chars`` characters (the markers read that much of a longer text); a longer text is
    classified restricted without a pattern scan. Time is linear in that bound (RE2): call it off the event loop
    when the texts are big."""
    joined = "\n".join(texts)
    chars = len(joined)
    data = encode(joined[:max_scan_chars] if chars > max_scan_chars else joined)
    signals: list[str] = []
    markers = _Markers(_CODE.search(data), _MATH.search(data), _ANALYSIS.search(data), has_tools)
    signals += markers.signals()
    signals.append(f"{chars} chars")
    if task is None:
        task = "code" if markers.code else "reasoning" if markers.math else "chat"
    complexity = _complexity(chars, markers, max_tokens, thresholds, signals)
    data_class = _known(data_class if data_class is not None else default_class)
    if min_class is not None and class_rank(_known(min_class)) > class_rank(data_class):
        data_class = min_class  # the user's class: a caller may raise it, never lower it
        signals.append(f"the user's data class {min_class}")
    # Patterns only ever raise the class: a request that says "public" but carries a private key is restricted.
    if data_class != "restricted":
        outgoing = joined if scan is None else "\n".join(scan)
        scanned = data if scan is None else None
        if _restricted(outgoing, scanned, restricted_patterns, max_scan_chars, signals):
            data_class = "restricted"
    return Classification(task, complexity, data_class, user, tier, tuple(signals))


@dataclass(frozen=True)
class _Markers:
    """What the cheap scans found in the user-visible text."""

    code: bool
    math: bool
    analysis: bool
    tools: bool

    def signals(self) -> list[str]:
        found = ((self.code, "code markers"), (self.math, "maths markers"), (self.analysis, "analysis markers"))
        return [name for hit, name in (*found, (self.tools, "tools")) if hit]


def _complexity(
    chars: int, markers: _Markers, max_tokens: int | None, thresholds: Thresholds, signals: list[str]
) -> str:
    """One point per marker, up to two for length, one for a large requested output: 0 is simple, 1 medium."""
    score = 0
    if chars >= thresholds.complex_chars:
        score += 2
    elif chars > thresholds.simple_chars:
        score += 1
    score += markers.code + markers.math + markers.analysis + markers.tools
    if max_tokens is not None and max_tokens >= thresholds.complex_max_tokens:
        score += 1
        signals.append(f"max_tokens {max_tokens}")
    return "simple" if score == 0 else "medium" if score <= 1 else "complex"


def _restricted(
    outgoing: str,
    scanned: bytes | None,
    patterns: Sequence[ScanPattern | re.Pattern[str] | str],
    max_scan_chars: int,
    signals: list[str],
) -> bool:
    """Whether what would leave the machine is restricted: too long to scan to the end, or a pattern matches.
    ``scanned`` is its encoding when the caller has it already."""
    if len(outgoing) > max_scan_chars:
        # not scanned to the end, so it might hold anything: it stays here
        signals.append(f"too long to scan for restricted data ({len(outgoing)} > {max_scan_chars} chars)")
        return True
    if patterns:
        data = encode(outgoing) if scanned is None else scanned
        if any(as_scan_pattern(p).search(data) for p in patterns):
            signals.append("restricted pattern matched")
            return True
    return False


def _known(data_class: str) -> str:
    if data_class not in DATA_CLASSES:
        raise ValueError(f"unknown data class {data_class!r}; use one of {', '.join(DATA_CLASSES)}")
    return data_class


def class_rank(data_class: str) -> int:
    return DATA_CLASSES.index(data_class)
