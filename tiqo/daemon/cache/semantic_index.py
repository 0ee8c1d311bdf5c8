"""The semantic cache's question vectors, held in memory per group.

A group's vectors are read from SQLite on its first lookup, then appended to as entries are written, so a lookup is
one matrix product over memory instead of a read of every vector in the group: bench/semantic_cache.py measured that
read at 1.7 ms for 1,000 entries and 9.9 ms for 5,000, and a chatbot with one system prompt puts every question in one
group. Expired entries are masked, and dropped once they are half of a group. At most ``budget`` bytes of vectors are
held: the least recently used groups go first and are read again on their next lookup.

SQLite stays the truth: a hit is served only if its entry is still there (``Store.cache_get``), so a vector whose
entry was cleared or replaced costs a miss, never a wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

BUDGET = 32 << 20  # bytes of vectors held: 21,845 questions at 384 dimensions

Loader = Callable[[str, float], list[tuple[str, bytes, float]]]  # (group, now) -> (key, float32 bytes, expires)


class _Group:
    def __init__(self, dim: int, capacity: int = 16) -> None:
        self.keys: list[str] = []
        self.matrix = np.empty((capacity, dim), np.float32)
        self.expires = np.empty(capacity, np.float64)

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)

    def append(self, key: str, vector: np.ndarray, expires: float) -> None:
        n = len(self.keys)
        if n == len(self.expires):
            self.matrix = np.concatenate([self.matrix, np.empty_like(self.matrix)])
            self.expires = np.concatenate([self.expires, np.empty_like(self.expires)])
        self.matrix[n], self.expires[n] = vector, expires
        self.keys.append(key)

    def nearest(self, vector: np.ndarray, now: float) -> tuple[str, float] | None:
        n = len(self.keys)
        live = self.expires[:n] > now
        if n and int(np.count_nonzero(live)) * 2 < n:
            self._drop_expired(now)
            n, live = len(self.keys), self.expires[: len(self.keys)] > now
        if n == 0:
            return None
        scores = np.where(live, self.matrix[:n] @ vector, -np.inf)
        best = int(np.argmax(scores))
        return (self.keys[best], float(scores[best])) if np.isfinite(scores[best]) else None

    def _drop_expired(self, now: float) -> None:
        n = len(self.keys)
        live = np.flatnonzero(self.expires[:n] > now)
        kept = _Group(self.matrix.shape[1], max(16, 2 * len(live)))
        kept.matrix[: len(live)], kept.expires[: len(live)] = self.matrix[live], self.expires[live]
        kept.keys = [self.keys[i] for i in live]
        self.keys, self.matrix, self.expires = kept.keys, kept.matrix, kept.expires


class SemanticIndex:
    def __init__(self, load: Loader, budget: int = BUDGET) -> None:
        self.load = load
        self.budget = budget
        self.groups: OrderedDict[str, _Group] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for g in self.groups.values())

    def nearest(self, group: str, vector: np.ndarray, now: float) -> tuple[str, float] | None:
        """(key, cosine similarity) of the group's live entry most similar to ``vector`` (unit length), if any."""
        g = self.groups.get(group)
        if g is None:
            rows = [r for r in self.load(group, now) if len(r[1]) == vector.nbytes]  # (other sizes never compare)
            g = self.groups[group] = _Group(vector.size, max(16, 2 * len(rows)))
            if rows:
                n = len(rows)
                g.matrix[:n] = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(n, -1)
                g.expires[:n] = [r[2] for r in rows]
                g.keys = [r[0] for r in rows]
            self._trim(keep=group)
        self.groups.move_to_end(group)
        if g.matrix.shape[1] != vector.size:
            return None
        return g.nearest(vector, now)

    def add(self, group: str, key: str, vector: np.ndarray, expires: float) -> None:
        """An entry was written. A group not in memory is left alone: its first lookup reads it, this one included."""
        g = self.groups.get(group)
        if g is not None and g.matrix.shape[1] == vector.size:
            g.append(key, vector, expires)
            self._trim(keep=group)

    def clear(self) -> None:
        self.groups.clear()

    def _trim(self, keep: str) -> None:
        total = self.nbytes
        for name in list(self.groups):
            if total <= self.budget:
                break
            if name != keep:
                total -= self.groups.pop(name).nbytes
