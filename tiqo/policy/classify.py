"""Classify a request from cheap signals: task, complexity, data classification. Pure; table-tested."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

TASKS = ("chat", "code", "reasoning")
COMPLEXITIES = ("simple", "medium", "complex")
DATA_CLASSES = ("public", "internal", "confidential", "restricted")

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\s*\w*\(|=>|#include|\bimport \w+|\bSELECT\b.+\bFROM\b|"
    r"\b(?:python|javascript|typescript|rust|golang|java|c\+\+|sql|bash|regex|refactor|debug|compile|"
    r"stack ?trace|traceback|unit tests?|function|code)\b",
    re.IGNORECASE,
)
_MATH = re.compile(
    r"\b(?:prove|proof|theorem|lemma|integral|derivative|equation|solve for|probability|optimi[sz]e)\b|"
    r"[∑∫√≤≥]|\d\s*[\^*/]\s*\d",
    re.IGNORECASE,
)
_ANALYSIS = re.compile(
    r"\b(?:analy[sz]e|analysis|compare|contrast|trade-?offs?|step by step|explain why|evaluate|critique|design|"
    r"architecture|strategy|pros and cons|in depth|detailed|comprehensive|essay|report)\b",
    re.IGNORECASE,
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
    restricted_patterns: Sequence[re.Pattern[str]] = (),
    user: str = "local",
    tier: str = "default",
    task: str | None = None,
    thresholds: Thresholds = Thresholds(),
) -> Classification:
    """``texts`` are the message contents (system and user turns). Explicit ``task``/``data_class`` win."""
    joined = "\n".join(texts)
    signals: list[str] = []
    code = bool(_CODE.search(joined))
    math = bool(_MATH.search(joined))
    analysis = bool(_ANALYSIS.search(joined))
    if code:
        signals.append("code markers")
    if math:
        signals.append("maths markers")
    if analysis:
        signals.append("analysis markers")
    if has_tools:
        signals.append("tools")
    chars = len(joined)
    signals.append(f"{chars} chars")

    if task is None:
        task = "code" if code else "reasoning" if math else "chat"

    score = 0
    if chars >= thresholds.complex_chars:
        score += 2
    elif chars > thresholds.simple_chars:
        score += 1
    score += code + math + analysis + has_tools
    if max_tokens is not None and max_tokens >= thresholds.complex_max_tokens:
        score += 1
        signals.append(f"max_tokens {max_tokens}")
    complexity = "simple" if score == 0 else "medium" if score <= 1 else "complex"

    if data_class is None:
        data_class = default_class
    # Patterns only ever raise the class: a request that says "public" but carries a private key is restricted.
    if data_class != "restricted":
        for pattern in restricted_patterns:
            if pattern.search(joined):
                data_class = "restricted"
                signals.append("restricted pattern matched")
                break
    if data_class not in DATA_CLASSES:
        raise ValueError(f"unknown data class {data_class!r}; use one of {', '.join(DATA_CLASSES)}")
    return Classification(task, complexity, data_class, user, tier, tuple(signals))


def class_rank(data_class: str) -> int:
    return DATA_CLASSES.index(data_class)
