"""A growing buffer of decoded samples with a hard ceiling: what keeps a transcription's memory bounded."""

from __future__ import annotations

from typing import Any

import numpy as np

_FIRST_GUESS = 60  # seconds of room when the header gives no length
_MOST_RESERVED = 3600  # seconds of room reserved up front at most, whatever a header claims


class PcmBuffer:
    """float32 samples appended into one array that never holds more than ``limit`` samples.

    The array grows in place (``ndarray.resize`` is a ``realloc``, and glibc remaps large blocks rather than copying
    them), so the peak is about the audio itself: not a list of parts, plus their concatenation, plus a float copy.
    """

    def __init__(self, limit: int, rate: int, expected: int | None = None) -> None:
        self.limit = limit
        self.size = 0
        room = expected if expected is not None else _FIRST_GUESS * rate
        self._buf = np.empty(max(0, min(limit, room, _MOST_RESERVED * rate)), np.float32)

    def __enter__(self) -> PcmBuffer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:  # the traceback keeps this frame alive until a GC: let the samples go now
            self._buf = np.empty(0, np.float32)

    def add(self, samples: Any) -> bool:
        """Append ``samples``; False, with nothing appended, when that would pass the limit."""
        end = self.size + samples.size
        if end > self.limit:
            return False
        if end > self._buf.size:
            self._buf.resize(min(self.limit, max(end, self._buf.size * 3 // 2)), refcheck=False)
        self._buf[self.size : end] = samples
        self.size = end
        return True

    def take(self) -> Any:
        """The samples as an array of exactly ``size`` (the buffer is handed over, not copied)."""
        buf, self._buf = self._buf, np.empty(0, np.float32)
        buf.resize(self.size, refcheck=False)
        return buf
