"""The semantic cache: pure request splitting, the SQLite columns (and their migration), and end to end through a real
daemon whose questions are embedded by the real bundled model (all-MiniLM-L6-v2). Answers come from the stub provider
(``echo: <question>``), so a semantic hit is visible: it repeats the first wording, and the stub sees no new request."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import DaemonProc, run_cli, short_home, start_daemon
from tests.test_gateway import ask, served_by, write_home
from tests.upstreams import Upstream
from tiqo.daemon.cache.response_cache import ResponseCache
from tiqo.daemon.cache.semantic_index import SemanticIndex
from tiqo.daemon.pipeline.served import Served
from tiqo.daemon.state.shared import CacheEntry
from tiqo.daemon.state.store import Store
from tiqo.policy import cache as cachepol
from tiqo.policy.cache import semantic_group, semantic_parts
from tiqo.policy.classify import Classification
from tiqo.sdk.engine import Piece

# ------------------------------------------------------------------ pure


def chat(question: Any, *earlier: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [*earlier, {"role": "user", "content": question}], **params}


def test_only_the_last_user_message_is_compared_by_meaning() -> None:
    context, question = semantic_parts(chat("What is the capital of France?", temperature=0)) or ("", "")
    assert question == "What is the capital of France?"
    assert semantic_parts(chat("Tell me the capital of France.", temperature=0))[0] == context  # type: ignore[index]
    # Everything else must match exactly: parameters, earlier turns, the system prompt, tools.
    system = {"role": "system", "content": "Answer in French."}
    others = [
        chat("What is the capital of France?", temperature=0, max_tokens=5),
        chat("What is the capital of France?", system, temperature=0),
        chat("What is the capital of France?", {"role": "user", "content": "hi"}, temperature=0),
        chat("What is the capital of France?", temperature=0, tools=[{"type": "function", "function": {"name": "f"}}]),
    ]
    assert all(semantic_parts(body)[0] != context for body in others)  # type: ignore[index]
    # Delivery-only fields do not matter.
    assert (
        semantic_parts(chat("Q?", temperature=0, stream=True, user="x"))[0]
        == semantic_parts(  # type: ignore[index]
            chat("Q?", temperature=0)
        )[0]
    )
    # Text parts count as text; an image, an assistant turn last or an empty question have no place in it.
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "this?"}]
    assert semantic_parts(chat(parts)) is not None and semantic_parts(chat(parts))[1] == "What is\nthis?"  # type: ignore[index]
    assert semantic_parts(chat([{"type": "image_url", "image_url": {"url": "data:,"}}])) is None
    assert semantic_parts({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert semantic_parts(chat("   ")) is None and semantic_parts({}) is None
    # Groups separate answering model, scope and embedding model.
    g = semantic_group(context, "m", "internal", "e")
    assert len({g, semantic_group(context, "n", "internal", "e"), semantic_group(context, "m", "public", "e")}) == 3
    assert g != semantic_group(context, "m", "internal", "other-embedder")


def test_store_keeps_vectors_beside_answers_and_migrates_old_files(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute(
        "CREATE TABLE cache (key TEXT PRIMARY KEY, scope TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,"
        " expires REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0, response TEXT NOT NULL)"
    )
    db.execute("INSERT INTO cache VALUES ('k0', 'internal', 'm', 0, 1e12, 0, '{\"text\": \"old\"}')")
    db.commit()
    db.close()
    store = Store(old)
    assert store.cache_get("k0", 10.0) == {"text": "old"}  # the old entry survives the new columns
    store.cache_put(CacheEntry("k1", "internal", "m", {"text": "a"}, 100, 10.0, sem_group="g", vector=b"\x00" * 8))
    store.cache_put(CacheEntry("k2", "internal", "m", {"text": "b"}, 1, 10.0, sem_group="g", vector=b"\x01" * 8))
    store.cache_put(CacheEntry("k3", "internal", "m", {"text": "c"}, 100, 10.0))
    assert store.cache_vectors("g", 10.5) == [("k1", b"\x00" * 8, 110.0), ("k2", b"\x01" * 8, 11.0)]
    assert store.cache_vectors("g", 20.0) == [("k1", b"\x00" * 8, 110.0)]  # k2 expired
    assert store.cache_get("k1", 20.0, "semantic_hits") == {"text": "a"}
    stats = store.cache_stats(20.0)
    assert (stats["hits"], stats["semantic_hits"], stats["misses"]) == (1, 1, 0) and stats["hit_rate"] == 1.0
    store.cache_clear()
    assert store.cache_vectors("g", 10.5) == [] and store.cache_stats(20.0)["semantic_hits"] == 0
    store.close()


class CountingEmbedder:
    """Embeds every question as the same unit vector and counts the calls (the ordering test needs no real model)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def local(self, texts: list[str], model: str | None = None) -> tuple[Any, Any]:
        import numpy as np

        from tiqo.daemon.runtime.engines.embed import Embedded

        self.calls.append(list(texts))
        return SimpleNamespace(name="e"), Embedded(np.ones((len(texts), 4), np.float32) / 2, len(texts), 0)


def test_an_exact_hit_costs_no_embedding(tmp_path: Path) -> None:
    settings = {"cache.mode": "deterministic", "cache.semantic": True, "cache.semantic_threshold": 0.9, "cache.ttl": 60}
    settings["cache.scope"] = "all"  # the group checked below is the class's shared one
    store = Store(tmp_path / "c.db")
    cache = ResponseCache(store, settings, lambda: 100.0)
    cache.embeddings = embedder = CountingEmbedder()
    who = Classification("chat", "simple", "internal", "ann", "free")
    wire = chat("What is the capital of France?", temperature=0)

    async def ask(body: dict[str, Any], control: str = "use") -> str:
        use = await cache.use(body, who, control)
        assert use is not None
        served = Served()
        if control == "use" and (hit := await cache.lookup(body, ["m"], use)) is not None:
            served.cached(hit)
            return served.cache
        cache.put(body, "m", use, "Paris", [], Piece("", "stop", 7, 1))
        return "miss"

    assert asyncio.run(ask(wire)) == "miss" and len(embedder.calls) == 1  # embedded once, stored with its answer
    assert asyncio.run(ask(wire)) == "hit" and len(embedder.calls) == 1  # the exact hit skipped the embedding
    assert asyncio.run(ask(chat("Capital of France?", temperature=0))) == "semantic" and len(embedder.calls) == 2
    assert asyncio.run(ask(chat("France's capital?", temperature=0), "refresh")) == "miss"  # written, not looked up
    assert (
        embedder.calls[-1] == ["France's capital?"]
        and store.cache_vectors(
            cachepol.semantic_group(cachepol.semantic_parts(wire)[0], "m", "internal", "e"),  # type: ignore[index]
            100.0,
        )[-1][1]
        == (np.ones(4, np.float32) / 2).tobytes()
    )
    settings["cache.semantic"] = False
    assert asyncio.run(ask(chat("Capital of France, please?", temperature=0))) == "miss" and len(embedder.calls) == 3
    store.close()


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


def test_the_in_memory_index_reads_a_group_once_then_keeps_step() -> None:
    rows = {"g": [("a", unit(1, 0).tobytes(), 50.0), ("b", unit(0, 1).tobytes(), 10.0)], "h": []}
    loads: list[str] = []

    def load(group: str, now: float) -> list[tuple[str, bytes, float]]:
        loads.append(group)
        return [r for r in rows[group] if r[2] > now]

    index = SemanticIndex(load)
    assert index.nearest("g", unit(0, 1), 5.0) == ("b", pytest.approx(1.0))
    index.add("g", "c", unit(1, 1), 60.0)  # written after the load: appended, not read again
    assert index.nearest("g", unit(1, 1), 5.0) == ("c", pytest.approx(1.0)) and loads == ["g"]
    assert index.nearest("g", unit(0, 1), 20.0)[0] == "c"  # type: ignore[index]  # b expired: masked
    assert index.nearest("g", unit(0, 1), 55.0)[0] == "c"  # type: ignore[index]  # a too; then dropped
    assert index.groups["g"].keys == ["c"] and index.nearest("g", unit(0, 1), 70.0) is None
    index.add("h", "x", unit(1, 0), 99.0)  # h not in memory yet: its first lookup reads SQLite instead
    assert "h" not in index.groups and index.nearest("h", unit(1, 0), 1.0) is None and loads == ["g", "h"]
    assert index.nearest("g", unit(1, 0, 0), 1.0) is None  # another dimension never compares
    # Past the budget, the least recently used group goes and is read again when next asked.
    small = SemanticIndex(load, budget=index.groups["g"].nbytes)
    small.nearest("g", unit(1, 0), 1.0)
    small.nearest("h", unit(1, 0), 1.0)
    assert list(small.groups) == ["h"]
    small.nearest("g", unit(1, 0), 1.0)
    assert list(small.groups) == ["g"] and loads[-3:] == ["g", "h", "g"]
    for n in range(100):  # growing past its capacity keeps every vector
        small.add("g", f"k{n}", unit(n + 1, 1), 99.0)
    assert small.nearest("g", unit(50, 1), 1.0)[0] == "k49"  # type: ignore[index]


# ------------------------------------------------------------------ a real daemon, the real embedding model


@pytest.fixture
def sem(request: pytest.FixtureRequest, stubs: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    """A daemon on the stub providers with the semantic cache on (or as parametrized: False leaves the default)."""
    home = short_home()
    on = getattr(request, "param", True)
    write_home(home, *stubs, extra={"cache": {"semantic": True, "semantic_threshold": 0.93}} if on else None)
    d = start_daemon(home)
    yield d
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def test_a_paraphrase_is_served_from_the_semantic_cache(sem: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    first = ask(sem, "alpha-m", "What is the capital of France?", temperature=0)
    assert first.status_code == 200 and first.headers["x-tiqo-cache"] == "miss"
    answer = first.json()["choices"][0]["message"]["content"]
    assert answer == "echo: What is the capital of France?"

    r = ask(sem, "alpha-m", "What's the capital city of France?", temperature=0)
    assert r.headers["x-tiqo-cache"] == "semantic" and r.headers["x-tiqo-backend"] == "cache"
    assert r.json()["choices"][0]["message"]["content"] == answer
    assert 0.93 <= float(r.headers["x-tiqo-cache-similarity"]) < 1.0
    r = ask(sem, "alpha-m", "Tell me the capital of France.", temperature=0, stream=True)
    assert r.headers["x-tiqo-cache"] == "semantic" and "echo: What is the capital of France?" in "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in r.text.splitlines()
        if line.startswith("data: {")
    )
    assert len(served_by(a)) == 1

    # Near but different questions, other parameters, another model: all go to the provider.
    misses = [
        ask(sem, "alpha-m", "What is the capital of Germany?", temperature=0),
        ask(sem, "alpha-m", "What is the population of France?", temperature=0),
        ask(sem, "alpha-m", "What's the capital city of France?", temperature=0, max_tokens=7),
        ask(sem, "bravo-m", "What's the capital city of France?", temperature=0),
    ]
    assert [m.headers["x-tiqo-cache"] for m in misses] == ["miss"] * 4
    assert misses[0].json()["choices"][0]["message"]["content"] == "echo: What is the capital of Germany?"
    assert "x-tiqo-cache-similarity" not in misses[0].headers
    # The exact repeat is an exact hit; x-tiqo-cache: refresh skips both lookups.
    assert ask(sem, "alpha-m", "What is the capital of France?", temperature=0).headers["x-tiqo-cache"] == "hit"
    refresh = {"x-tiqo-cache": "refresh"}
    r = ask(sem, "alpha-m", "Tell me the capital of France.", temperature=0, headers=refresh)
    assert r.headers["x-tiqo-cache"] == "miss"
    assert r.json()["choices"][0]["message"]["content"] == "echo: Tell me the capital of France."

    stats = sem.client().get("/tiqo/cache").json()
    assert (stats["hits"], stats["semantic_hits"], stats["misses"]) == (1, 2, 5)  # refresh is not a lookup
    assert stats["semantic"] is True and stats["semantic_threshold"] == 0.93
    out = run_cli("cache", "stats", env=sem.env)
    assert out.returncode == 0 and "1 exact, 2 semantic" in out.stdout and "similarity ≥ 0.93" in out.stdout
    ledger = sem.client().get("/tiqo/usage", params={"by": "model"}).json()
    assert ledger["total"]["cache_hits"] == 3  # the ledger counts exact and semantic hits alike

    # Cleared: the paraphrase misses (the daemon's in-memory vectors went too), then hits the new answer.
    assert run_cli("cache", "clear", env=sem.env).returncode == 0
    assert ask(sem, "alpha-m", "What's the capital city of France?", temperature=0).headers["x-tiqo-cache"] == "miss"
    r = ask(sem, "alpha-m", "What is the capital of France?", temperature=0)
    assert r.headers["x-tiqo-cache"] == "semantic"
    assert r.json()["choices"][0]["message"]["content"] == "echo: What's the capital city of France?"


def test_semantic_hits_respect_restricted_scopes(sem: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    body = {"max_tokens": 8, "temperature": 0}
    ann = {"x-tiqo-class": "restricted", "x-tiqo-user": "ann"}
    r = ask(sem, "auto", "How do I reset my password?", headers=ann, **body)
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:llama.cpp"
    assert ask(sem, "auto", "How can I reset my password?", headers=ann, **body).headers["x-tiqo-cache"] == "semantic"
    bob = {"x-tiqo-class": "restricted", "x-tiqo-user": "bob"}
    assert ask(sem, "auto", "How can I reset my password?", headers=bob, **body).headers["x-tiqo-cache"] == "miss"
    assert a.requests == [] and b.requests == []  # restricted text was embedded and answered on this machine


@pytest.mark.parametrize("sem", [False], indirect=True)
def test_the_semantic_cache_is_off_by_default(sem: DaemonProc) -> None:
    assert ask(sem, "alpha-m", "What is the capital of France?", temperature=0).headers["x-tiqo-cache"] == "miss"
    assert ask(sem, "alpha-m", "What's the capital city of France?", temperature=0).headers["x-tiqo-cache"] == "miss"
    assert sem.client().get("/tiqo/cache").json()["semantic"] is False
