"""The vector store through its API, with the real embedding model and a real daemon process."""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, start_daemon, wait_for
from tiqo.daemon.knowledge.chunking import chunk_text, count_tokens

CORPUS = {
    "astronomy": "The telescope revealed distant galaxies and the rings of Saturn glowing in the night sky.",
    "cooking": "Knead the dough, let it rise for an hour, then bake the bread in a hot oven until golden.",
    "football": "The striker scored a late goal and the team won the championship final in extra time.",
    "finance": "The central bank raised interest rates to fight inflation, and bond yields climbed.",
    "gardening": "Water the tomato plants every morning and pull the weeds from the vegetable beds.",
    "medicine": "The doctor prescribed antibiotics for the bacterial infection and advised rest.",
    "programming": "The Python function raised an exception because the list index was out of range.",
    "music": "The orchestra rehearsed the symphony while the violinist tuned her instrument.",
    "weather": "A heavy thunderstorm with strong winds and hail is expected tomorrow afternoon.",
    "travel": "We booked a flight to Tokyo, packed our suitcases and reserved a hotel near the station.",
}
QUERIES = {
    "what planets and stars can you see at night": "astronomy",
    "how to make homemade bread": "cooking",
    "who won the soccer match": "football",
    "why are mortgage rates going up": "finance",
    "software bug in my code": "programming",
    "will it rain tomorrow": "weather",
    "planning a vacation in Japan": "travel",
    "classical concert practice": "music",
}


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon()
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["message"] and body.get("hint"), body
    return body


def ingest(c: httpx.Client, name: str, docs: dict[str, str], **extra: Any) -> dict[str, Any]:
    body = {"documents": [{"source": s, "text": t, "metadata": {}} for s, t in docs.items()], **extra}
    result: dict[str, Any] = ok(c.post(f"/tiqo/vectors/{name}/ingest", json=body))
    return result


def search(c: httpx.Client, name: str, text: str, **extra: Any) -> list[dict[str, Any]]:
    matches: list[dict[str, Any]] = ok(c.post(f"/tiqo/vectors/{name}/query", json={"text": text, **extra}))["matches"]
    return matches


# ------------------------------------------------------------------ chunker (pure)
def test_chunker_respects_size_overlap_and_boundaries() -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60)]
    text = " ".join(sentences[:30]) + "\n\n" + " ".join(sentences[30:])
    chunks = chunk_text(text, size=300, overlap=80)
    assert all(len(c) <= 300 for c in chunks)
    assert all(c.endswith(".") for c in chunks)  # broke at sentence ends
    assert all(any(c.startswith(s) for s in sentences) for c in chunks)  # and started at sentence starts
    for a, b in itertools.pairwise(chunks):  # each chunk repeats the end of the previous one
        assert b.split(". ")[0] in a
    joined = " ".join(chunks)
    assert all(s in joined for s in sentences)  # nothing lost
    assert chunk_text("   \n\n ") == []
    assert chunk_text("short text") == ["short text"]
    assert chunk_text("x" * 2500, size=1000, overlap=0) == ["x" * 1000, "x" * 1000, "x" * 500]
    by_tokens = chunk_text(text, size=50, overlap=10, unit="tokens")
    assert all(count_tokens(c) <= 50 for c in by_tokens) and len(by_tokens) > 5
    paragraphs = chunk_text("First paragraph here.\n\nSecond paragraph there.", size=30, overlap=0)
    assert paragraphs == ["First paragraph here.", "Second paragraph there."]
    for size, overlap in ((0, 0), (10, 10), (10, -1)):
        with pytest.raises(ValueError):
            chunk_text("abc", size=size, overlap=overlap)


# ------------------------------------------------------------------ search quality
def test_near_duplicates_score_higher_than_unrelated(d: DaemonProc) -> None:
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "dups"}))
    docs = [
        {"id": "cat", "text": "The cat is sleeping on the warm windowsill."},
        {"id": "stocks", "text": "Quarterly earnings beat analyst expectations."},
    ]
    assert ok(c.post("/tiqo/vectors/dups/upsert", json={"documents": docs}))["upserted"] == 2
    matches = search(c, "dups", "A cat sleeps on the sunny windowsill.", top_k=2)
    assert [m["id"] for m in matches] == ["cat", "stocks"]
    assert matches[0]["score"] > 0.7 > 0.2 > matches[1]["score"]
    assert all(-1.0 <= m["score"] <= 1.0 for m in matches)


def test_corpus_returns_the_right_document(d: DaemonProc) -> None:
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "corpus"}))
    counts = ingest(c, "corpus", {f"{k}.md": v for k, v in CORPUS.items()})
    assert counts["added"] == len(CORPUS) and counts["chunks"] == len(CORPUS)
    for query, topic in QUERIES.items():
        matches = search(c, "corpus", query, top_k=3)
        assert matches[0]["metadata"]["source"] == f"{topic}.md", (query, matches)
        assert matches[0]["text"] == CORPUS[topic]
    hybrid = search(c, "corpus", "thunderstorm hail", top_k=3, hybrid=True)
    assert hybrid[0]["metadata"]["source"] == "weather.md" and "rrf" in hybrid[0]
    listed = ok(c.get("/tiqo/vectors"))["collections"]
    row = next(x for x in listed if x["name"] == "corpus")
    assert row["rows"] == len(CORPUS) and row["dimension"] == 384 and row["model"]


def test_reingest_is_idempotent_and_replaces_changed_sources(d: DaemonProc) -> None:
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "idem"}))
    long_text = "\n\n".join(f"Paragraph {i}. " + CORPUS[k] for i, k in enumerate(CORPUS))
    docs = {"a.md": long_text, "b.md": CORPUS["music"]}
    first = ingest(c, "idem", docs, chunk_size=200, chunk_overlap=40)
    assert first["added"] == 2 and first["chunks"] > 5
    rows = ok(c.get("/tiqo/vectors/idem"))["rows"]
    again = ingest(c, "idem", docs, chunk_size=200, chunk_overlap=40)
    assert again == {"added": 0, "unchanged": 2, "replaced": 0, "chunks": 0, "embedded": 0}
    assert ok(c.get("/tiqo/vectors/idem"))["rows"] == rows
    changed = ingest(c, "idem", {"a.md": "Completely new content about volcanoes erupting lava."}, chunk_size=200)
    assert changed["replaced"] == 1 and changed["chunks"] == 1
    assert ok(c.get("/tiqo/vectors/idem"))["rows"] == 2  # a.md's old chunks are gone, b.md untouched
    assert search(c, "idem", "lava from a volcano", top_k=1)[0]["metadata"]["source"] == "a.md"
    none_left = search(c, "idem", "Paragraph", top_k=5, filter="source = 'a.md' AND text LIKE 'Paragraph%'")
    assert none_left == []


def test_metadata_filter(d: DaemonProc) -> None:
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "filt"}))
    ingest(c, "filt", {"x/notes.md": CORPUS["cooking"], "x/notes.txt": CORPUS["cooking"] + " Serve warm."})
    body = {"documents": [{"source": "y.md", "text": CORPUS["finance"], "metadata": {"lang": "en"}}]}
    ok(c.post("/tiqo/vectors/filt/ingest", json=body))
    md = search(c, "filt", "baking bread", top_k=5, filter="source LIKE '%.md'")
    assert {m["metadata"]["source"] for m in md} == {"x/notes.md", "y.md"}
    assert md[0]["metadata"]["source"] == "x/notes.md"
    en = search(c, "filt", "baking bread", top_k=5, filter="""meta LIKE '%"lang": "en"%'""")
    assert [m["metadata"] for m in en] == [{"lang": "en", "source": "y.md", "chunk": 0}]
    deleted = ok(c.post("/tiqo/vectors/filt/delete", json={"source": "x/notes.txt"}))
    assert deleted == {"deleted": 1, "rows": 2}


def test_users_are_isolated_unless_shared(d: DaemonProc) -> None:
    c = d.client()
    alice, bob = {"x-tiqo-user": "alice"}, {"x-tiqo-user": "bob"}
    ok(c.post("/tiqo/vectors", json={"name": "private"}, headers=alice))
    ok(c.post("/tiqo/vectors", json={"name": "team", "shared": True}, headers=alice))
    for name in ("private", "team"):
        body = {"documents": [{"text": CORPUS["gardening"]}]}
        ok(c.post(f"/tiqo/vectors/{name}/upsert", json=body, headers=alice))
    names = {x["name"] for x in ok(c.get("/tiqo/vectors", headers=bob))["collections"]}
    assert "team" in names and "private" not in names
    error(c.post("/tiqo/vectors/private/query", json={"text": "tomatoes"}, headers=bob), 404)
    assert ok(c.post("/tiqo/vectors/team/query", json={"text": "tomatoes"}, headers=bob))["matches"]
    error(c.post("/tiqo/vectors/team/upsert", json={"documents": [{"text": "hi"}]}, headers=bob), 403)
    error(c.delete("/tiqo/vectors/team", headers=bob), 403)
    ok(c.post("/tiqo/vectors", json={"name": "private"}, headers=bob))  # bob's own, same name: no conflict
    assert ok(c.post("/tiqo/vectors/private/query", json={"text": "tomatoes"}, headers=bob))["matches"] == []
    ok(c.post("/tiqo/vectors", json={"name": "team"}, headers=bob))  # his own wins over the one shared as "team"
    assert ok(c.post("/tiqo/vectors/team/query", json={"text": "tomatoes"}, headers=bob))["matches"] == []
    assert ok(c.delete("/tiqo/vectors/team", headers=alice))["deleted"]
    teams = [x for x in ok(c.get("/tiqo/vectors", headers=bob))["collections"] if x["name"] == "team"]
    assert [x["owner"] for x in teams] == ["bob"]


def test_raw_vectors_pinecone_style(d: DaemonProc) -> None:
    c = d.client()
    ok(c.post("/tiqo/vectors", json={"name": "raw", "dimension": 3}))
    vectors = [
        {"id": "x", "values": [1.0, 0.0, 0.0], "metadata": {"genre": "drama", "text": "the x"}},
        {"id": "y", "values": [0.0, 1.0, 0.0], "metadata": {"genre": "comedy"}},
        {"id": "z", "values": [0.7, 0.7, 0.0]},
    ]
    assert ok(c.post("/tiqo/vectors/raw/upsert", json={"vectors": vectors}))["upserted"] == 3
    matches = ok(c.post("/tiqo/vectors/raw/query", json={"vector": [0.9, 0.1, 0.0], "top_k": 2}))["matches"]
    assert [m["id"] for m in matches] == ["x", "z"]
    assert math.isclose(matches[0]["score"], 0.9 / math.hypot(0.9, 0.1), abs_tol=1e-4)
    assert matches[0]["metadata"] == {"genre": "drama"} and matches[0]["text"] == "the x"
    update = {"vectors": [{"id": "x", "values": [0.0, 0.0, 1.0]}]}
    assert ok(c.post("/tiqo/vectors/raw/upsert", json=update))["rows"] == 3  # same id: replaced
    top = ok(c.post("/tiqo/vectors/raw/query", json={"vector": [0, 0, 1], "top_k": 1}))["matches"][0]
    assert top["id"] == "x" and top["score"] > 0.99
    assert ok(c.post("/tiqo/vectors/raw/delete", json={"ids": ["y", "z"]}))["deleted"] == 2
    error(c.post("/tiqo/vectors/raw/query", json={"text": "words"}), 400)  # no model to embed with


def test_bad_input_gets_clear_errors(d: DaemonProc) -> None:
    c = d.client()
    assert error(c.post("/tiqo/vectors/nope/query", json={"text": "x"}), 404)["code"] == "not_found"
    error(c.delete("/tiqo/vectors/nope"), 404)
    ok(c.post("/tiqo/vectors", json={"name": "errs", "dimension": 4}))
    assert error(c.post("/tiqo/vectors", json={"name": "errs"}), 409)["code"] == "conflict"
    ok(c.post("/tiqo/vectors/errs/upsert", json={"vectors": [{"id": "a", "values": [1, 0, 0, 0]}]}))
    bad = {"vectors": [{"id": "b", "values": [1, 0]}]}
    assert error(c.post("/tiqo/vectors/errs/upsert", json=bad), 400)["code"] == "dimension_mismatch"
    assert "4" in error(c.post("/tiqo/vectors/errs/query", json={"vector": [1, 0]}), 400)["message"]
    body = {"vector": [1, 0, 0, 0], "filter": "no_such_column = 3"}
    assert error(c.post("/tiqo/vectors/errs/query", json=body), 400)["param"] == "filter"
    error(c.post("/tiqo/vectors", json={"name": "bad name!"}), 400)
    ok(c.post("/tiqo/vectors", json={"name": "texts"}))
    error(c.post("/tiqo/vectors/texts/upsert", json={"documents": [{"text": "  "}]}), 400)
    error(c.post("/tiqo/vectors/texts/ingest", json={"documents": [{"source": "a", "text": ""}]}), 400)
    error(c.post("/tiqo/vectors/texts/query", json={"text": ""}), 400)
    error(c.post("/tiqo/vectors/texts/query", json={"text": "x", "top_k": 0}), 400)
    # The query route parses its own body: broken JSON and wrong types get the same errors as every other route.
    broken = c.post("/tiqo/vectors/texts/query", content=b'{"text": "x",', headers={"content-type": "application/json"})
    assert error(broken, 400)["code"] == "invalid_json"
    wrong = error(c.post("/tiqo/vectors/texts/query", json={"vector": ["a", 1]}), 422)
    assert wrong["code"] == "validation_error" and wrong["param"] == "vector.0"
    schema = c.get("/openapi.json").json()["paths"]["/tiqo/vectors/{name}/query"]["post"]["requestBody"]
    assert "top_k" in schema["content"]["application/json"]["schema"]["properties"]
    error(c.post("/tiqo/vectors", json={"name": "m", "model": "no-such-model"}), 404)


def test_data_survives_a_restart() -> None:
    d = start_daemon()
    try:
        c = d.client()
        ok(c.post("/tiqo/vectors", json={"name": "keep", "shared": True}, headers={"x-tiqo-user": "carol"}))
        ingest_body = {"documents": [{"source": f"{k}.md", "text": v} for k, v in CORPUS.items()]}
        ok(c.post("/tiqo/vectors/keep/ingest", json=ingest_body, headers={"x-tiqo-user": "carol"}))
        d.stop()
        d = start_daemon(d.home)
        c = d.client()
        listed = ok(c.get("/tiqo/vectors"))["collections"]
        assert [(x["name"], x["owner"], x["rows"]) for x in listed] == [("keep", "carol", len(CORPUS))]
        assert search(c, "keep", "who won the soccer match")[0]["metadata"]["source"] == "football.md"
        again = ok(c.post("/tiqo/vectors/keep/ingest", json=ingest_body, headers={"x-tiqo-user": "carol"}))
        assert again["unchanged"] == len(CORPUS)
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def test_ann_index_builds_in_the_background_and_agrees_with_flat_search() -> None:
    d = start_daemon(TIQO_VECTORS_INDEX_THRESHOLD="300")
    try:
        c = d.client()
        ok(c.post("/tiqo/vectors", json={"name": "big"}))
        topics = list(CORPUS.values())
        docs = [
            {"id": f"d{i}", "text": f"{topics[i % len(topics)]} Note {i}: variant {i * 7919 % 1000}."}
            for i in range(360)
        ]
        queries = list(QUERIES)
        for start in range(0, 240, 120):  # below the threshold: exact search
            ok(c.post("/tiqo/vectors/big/upsert", json={"documents": docs[start : start + 120]}))
        assert not ok(c.get("/tiqo/vectors/big"))["indexed"]
        ok(c.post("/tiqo/vectors/big/upsert", json={"documents": docs[240:]}))  # crosses it: the build starts
        during = [search(c, "big", q, top_k=5) for q in queries]  # queries keep working while it builds
        assert all(len(m) == 5 for m in during)
        assert wait_for(lambda: ok(c.get("/tiqo/vectors/big"))["indexed"], timeout=300)
        after = [search(c, "big", q, top_k=5) for q in queries]
        flat = [search(c, "big", q, top_k=5, exact=True) for q in queries]  # the same rows, searched exactly
        assert [m[0]["id"] for m in after] == [m[0]["id"] for m in flat]
        for got, want in zip(after, flat, strict=True):
            assert math.isclose(got[0]["score"], want[0]["score"], abs_tol=1e-3)
        ok(c.post("/tiqo/vectors/big/upsert", json={"documents": [{"id": "new", "text": "Zebras graze."}]}))
        assert search(c, "big", "zebras grazing on the savanna", top_k=1)[0]["id"] == "new"  # unindexed rows too
        assert ok(c.get("/tiqo/vectors/big"))["unindexed"] == 1
        # Once rows written since reach the threshold (or a tenth of the index), a refresh folds them in.
        more = [{"id": f"m{i}", "text": f"Penguins huddle on the ice, note {i}."} for i in range(300)]
        ok(c.post("/tiqo/vectors/big/upsert", json={"documents": more}))
        assert wait_for(lambda: ok(c.get("/tiqo/vectors/big"))["unindexed"] == 0, timeout=300)
        assert ok(c.get("/tiqo/vectors/big"))["rows"] == 661
        assert search(c, "big", "penguins on the ice", top_k=1)[0]["id"].startswith("m")
        assert "refreshed the ANN index of big (661 rows)" in d.log_text()
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
