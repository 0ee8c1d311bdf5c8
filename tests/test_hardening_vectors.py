"""Issue 16, finding 14: vector ingest is bounded by the work it causes (chunk size, chunks per request, embedding
calls), and no user can slip a collection in under the name of another user's shared one. Real daemon, real
embedding model, real LanceDB."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import DaemonProc, start_daemon
from tests.test_vectors import error, ok
from tiqo.daemon.knowledge.chunking import MIN_SIZE, TooManyChunks, chunk_text, min_chunks
from tiqo.daemon.knowledge.vectors import EMBED_BATCH, Collection, VectorStore

LIMIT = 50  # vectors.max_chunks_per_request for this module's daemon
SENTENCE = "The gardener waters the tomato plants every morning before the sun gets hot. "


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon(TIQO_VECTORS_MAX_CHUNKS=str(LIMIT))
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def ingest(c: httpx.Client, name: str, docs: dict[str, str], **extra: Any) -> httpx.Response:
    body = {"documents": [{"source": s, "text": t} for s, t in docs.items()], **extra}
    return c.post(f"/tiqo/vectors/{name}/ingest", json=body)


def rows(c: httpx.Client, name: str) -> int:
    return int(ok(c.get(f"/tiqo/vectors/{name}"))["rows"])


# ------------------------------------------------------------------ chunking bounds
def test_chunk_size_below_the_minimum_is_refused(d: DaemonProc) -> None:
    """Before: chunk_size 1 was accepted (one chunk per character or word). Now: 400 naming the minimum."""
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "tiny"}))
    for unit in ("chars", "tokens"):
        body = error(ingest(c, "tiny", {"a.md": SENTENCE}, chunk_size=1, chunk_unit=unit), 400)
        assert body["code"] == "bad_chunking" and body["param"] == "chunk_size"
        assert str(MIN_SIZE[unit]) in body["message"]
        low = MIN_SIZE[unit] - 1
        assert error(ingest(c, "tiny", {"a.md": SENTENCE}, chunk_size=low, chunk_unit=unit), 400)["param"]
    bad_overlap = error(ingest(c, "tiny", {"a.md": SENTENCE}, chunk_size=100, chunk_overlap=100), 400)
    assert "overlap" in bad_overlap["message"]
    assert rows(c, "tiny") == 0
    assert ok(ingest(c, "tiny", {"a.md": SENTENCE * 3}, chunk_size=MIN_SIZE["chars"]))["chunks"] > 1


def test_too_many_chunks_are_refused_before_any_embedding(d: DaemonProc) -> None:
    """Before: vectors.max_chunks_per_request did not exist and any number of chunks went to one embedding call.
    Now: 413 naming the setting, and nothing written; a request at the limit still goes through."""
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "many"}))
    one_each = {f"s{i}.md": SENTENCE for i in range(LIMIT)}  # one chunk per document: exactly the limit
    assert ok(ingest(c, "many", one_each))["chunks"] == LIMIT
    before = rows(c, "many")
    over = {**one_each, "extra.md": SENTENCE}  # the limit plus one, across documents
    body = error(ingest(c, "many", over), 413)
    assert body["code"] == "too_many_chunks" and "vectors.max_chunks_per_request" in body["message"]
    assert "vectors.max_chunks_per_request" in body["hint"]
    long_doc = {"long.md": SENTENCE * (LIMIT * 2)}  # one document of about 2x the limit in chunks
    assert error(ingest(c, "many", long_doc, chunk_size=MIN_SIZE["chars"] * 2), 413)["code"] == "too_many_chunks"
    assert rows(c, "many") == before  # nothing embedded or written by the refused requests


def test_a_huge_pathological_ingest_is_refused_without_chunking_it(d: DaemonProc) -> None:
    """The issue's case: a body near the 16 MiB limit at the smallest chunk size. Refused by the lower bound on its
    chunk count (one linear pass), while the daemon keeps answering others."""
    c = d.client(120)
    ok(c.post("/tiqo/vectors", json={"name": "huge"}))
    text = "a. " * (5 * 1024 * 1024)  # 15 MiB of one-word sentences
    started = time.perf_counter()
    body = error(ingest(c, "huge", {"huge.txt": text}, chunk_size=MIN_SIZE["chars"], chunk_overlap=0), 413)
    took = time.perf_counter() - started
    assert body["code"] == "too_many_chunks"
    health_started = time.perf_counter()
    assert ok(c.get("/tiqo/health"))
    print(f"15 MiB ingest refused in {took:.2f}s; health after {time.perf_counter() - health_started:.3f}s")
    assert rows(c, "huge") == 0


def test_chunk_count_bounds_pure() -> None:
    text = " ".join(f"Sentence {i} is about something quite specific." for i in range(400))
    for size, unit in ((64, "chars"), (300, "chars"), (16, "tokens"), (80, "tokens")):
        chunks = chunk_text(text, size, 0, unit)
        assert min_chunks(text, size, unit) <= len(chunks)  # a true lower bound: never refuses what would fit
        assert chunk_text(text, size, 0, unit, max_chunks=len(chunks)) == chunks
        with pytest.raises(TooManyChunks):
            chunk_text(text, size, 0, unit, max_chunks=len(chunks) - 1)


# ------------------------------------------------------------------ embedding in bounded batches
class _CountingEmbeddings:
    def __init__(self) -> None:
        self.calls: list[int] = []

    async def local(self, texts: list[str], model: str | None = None) -> tuple[None, Any]:
        self.calls.append(len(texts))

        class Done:
            vectors = np.ones((len(texts), 4), dtype=np.float32)

        return None, Done()


def test_embedding_is_done_in_bounded_batches(tmp_path: Path) -> None:
    """Before: ``_embed`` passed every text of a request to the model in one call (the model slot held for all of
    them). Now: calls of at most EMBED_BATCH texts, in order."""
    fake = _CountingEmbeddings()
    store = VectorStore(tmp_path, None, fake, {})
    c = Collection("u", "n", "t", "m", None, False, 0.0)
    texts = [f"text {i}" for i in range(EMBED_BATCH * 2 + 7)]
    vectors = asyncio.run(store._embed(c, texts))
    assert vectors.shape == (len(texts), 4)
    assert fake.calls == [EMBED_BATCH, EMBED_BATCH, 7]


# ------------------------------------------------------------------ shared names
def test_a_shared_name_cannot_be_shadowed_by_another_user(d: DaemonProc) -> None:
    """Before: 'aaron' (who sorts before 'alice') could share his own 'team', and everyone else asking for 'team'
    got his data instead of alice's. Now: the second share of a name is refused with 409 and a hint."""
    c = d.client()
    alice, aaron, carol, bob = ({"x-tiqo-user": u} for u in ("alice", "aaron", "carol", "bob"))
    ok(c.post("/tiqo/vectors", json={"name": "team", "shared": True}, headers=alice))
    docs = {"documents": [{"id": "real", "text": "Water the tomato plants every morning."}]}
    ok(c.post("/tiqo/vectors/team/upsert", json=docs, headers=alice))
    body = error(c.post("/tiqo/vectors", json={"name": "team", "shared": True}, headers=aaron), 409)
    assert body["code"] == "name_taken" and "alice" in body["message"] and body["param"] == "name"
    matches = ok(c.post("/tiqo/vectors/team/query", json={"text": "tomatoes"}, headers=carol))["matches"]
    assert [m["id"] for m in matches] == ["real"]
    owners = [x["owner"] for x in ok(c.get("/tiqo/vectors", headers=carol))["collections"] if x["name"] == "team"]
    assert owners == ["alice"]
    # Unchanged: a private collection of the same name is its owner's alone, and wins for that owner only.
    ok(c.post("/tiqo/vectors", json={"name": "team"}, headers=bob))
    assert ok(c.post("/tiqo/vectors/team/query", json={"text": "tomatoes"}, headers=bob))["matches"] == []
    matches = ok(c.post("/tiqo/vectors/team/query", json={"text": "tomatoes"}, headers=carol))["matches"]
    assert [m["id"] for m in matches] == ["real"]
    # Once alice removes hers, the name is free to share again.
    ok(c.delete("/tiqo/vectors/team", headers=alice))
    ok(c.post("/tiqo/vectors", json={"name": "team", "shared": True}, headers=aaron))
    assert json.dumps(ok(c.get("/tiqo/vectors/team", headers=carol))["owner"]) == '"aaron"'
