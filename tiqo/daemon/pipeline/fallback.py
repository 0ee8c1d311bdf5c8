"""After a failed attempt, what next: one rule for chat, completions, embeddings, speech-to-text and text-to-speech.

* ``"key"``: the same candidate with another of its provider's keys (this key is rate limited, out of quota or
  refused; another key may not be);
* ``"candidate"``: the next candidate (the provider is down, slow, broken or lacks the model; a local model is busy,
  failed to load, or the prompt is over its window, which a bigger model may have);
* ``"stop"``: answer the caller with this error (their request is wrong, and another backend would say so too; or a
  local error no other backend would fix).
"""

from __future__ import annotations

from typing import Literal

from tiqo.core.errors import Busy, ContextOverflow, ModelLoadFailed, TiqoError
from tiqo.daemon.upstream.client import AttemptFailed

Step = Literal["key", "candidate", "stop"]

KEY_LEVEL = frozenset({"rate_limited", "quota_exhausted", "auth"})  # FailureKinds that belong to one key
RATE_LIMITED = frozenset({"rate_limited", "quota_exhausted"})  # when every candidate ended so, the answer is a 429
LOCAL_FALLBACK = (Busy, ContextOverflow, ModelLoadFailed)  # local failures another candidate may not have


def after_failure(exc: AttemptFailed | TiqoError, key_name: str | None) -> Step:
    """The next step after ``exc`` from an attempt that used ``key_name`` (None: local, or a keyless provider)."""
    if isinstance(exc, AttemptFailed):
        if exc.kind == "bad_request":
            return "stop"
        return "key" if exc.kind in KEY_LEVEL and key_name is not None else "candidate"
    return "candidate" if isinstance(exc, LOCAL_FALLBACK) else "stop"
