"""What does the semantic cache cost, how often does it hit, and how wrong can it be?

Starts the provider stub (``python -m tests.upstreams``, answers ``echo: <question>``) and, in turn, two daemons on
the same config (provider ``stub``, model ``stub-m``, ``cache.mode`` deterministic): one with the semantic cache off,
one with it on (``TIQO_CACHE_SEMANTIC=1``, the default threshold unless ``--threshold``). Requests go over the Unix
socket with a bare http.client (bench/_daemon.py), temperature 0, so every one is cacheable:

* miss: questions never asked (the stub answers) -> p50 on both daemons; the difference is the embedding of the
  question that the semantic cache adds to every miss;
* exact hit: the same questions again -> p50 on both (an exact hit embeds nothing, so they should agree);
* paraphrase: each question in other words ("How do I" / "How can I", "What is" / "What's", ...) -> semantic hit rate
  and p50 of the hits;
* near miss: a question that differs in its subject ("a black hole" / "a neutron star", "bake sourdough bread" /
  "bake banana bread") -> false hits, which must stay 0 (a false hit answers the wrong question);
* scan: the group (same context and parameters) filled to ``--fill`` entries with ``x-tiqo-cache: refresh`` -> p50 of
  semantic hits then, and in this process the daemon's pieces: a group's first lookup (reads its vectors from SQLite)
  and every later one (the in-memory index);
* pairs: the similarities (via /v1/embeddings) that the default threshold 0.93 was chosen from.

Numbers only, no asserts. Run:  .venv/bin/python bench/semantic_cache.py [--fill 1000,5000] [--threshold 0.93] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from _daemon import RawClient, start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.upstreams import UpstreamProcess  # noqa: E402
from tiqo.daemon.cache.semantic_index import SemanticIndex  # noqa: E402
from tiqo.daemon.state.store import Store  # noqa: E402

TASKS = [  # (asked, near miss)
    ("reset my password", "change my username"),
    ("bake sourdough bread", "bake banana bread"),
    ("change a flat tyre", "change the oil in my car"),
    ("learn to swim as an adult", "learn to ski as an adult"),
    ("file my taxes online", "pay my taxes online"),
    ("install Python on Windows", "install Python on a Mac"),
    ("write a cover letter", "write a resignation letter"),
    ("grow tomatoes on a balcony", "grow strawberries on a balcony"),
    ("clean a cast iron pan", "season a cast iron pan"),
    ("train a puppy to sit", "train a puppy to stay"),
]
THINGS = [
    ("a black hole", "a neutron star"),
    ("compound interest", "simple interest"),
    ("the French Revolution", "the American Revolution"),
    ("a hash table", "a binary search tree"),
    ("photosynthesis", "cellular respiration"),
    ("the capital of France", "the capital of Germany"),
    ("the population of Canada", "the population of Australia"),
    ("inflation", "deflation"),
    ("a solar eclipse", "a lunar eclipse"),
    ("the boiling point of water", "the freezing point of water"),
]
TEMPLATES = [  # (asked, paraphrase), for tasks ({}) or things
    ("How do I {}?", "How can I {}?"),
    ("What is the best way to {}?", "What's the best way to {}?"),
    ("What is {}?", "What's {}?"),
    ("Explain {} in simple terms.", "Explain {} simply."),
    ("Give me three facts about {}.", "Tell me three facts about {}."),
]
PAIRS = [  # (a, b, kind): the table the default threshold was chosen from
    ("What is the capital of France?", "What's the capital city of France?", "paraphrase"),
    ("What is the capital of France?", "Tell me the capital of France.", "paraphrase"),
    ("How do I reset my password?", "How can I reset my password?", "paraphrase"),
    ("What colours are in a rainbow?", "What colors are in a rainbow?", "paraphrase"),
    ("What is the capital of France?", "what is the capital of france", "same, lowercase, no ?"),
    ("What is the capital of France?", "What is the capital of Germany?", "near miss"),
    ("What is the capital of France?", "What is the population of France?", "near miss"),
    ("Write a haiku about the sea.", "Write a haiku about the mountains.", "near miss"),
    ("Is 17 a prime number?", "Is 19 a prime number?", "near miss"),
    ("How do you say good morning in Spanish?", "How do you say good night in Spanish?", "near miss"),
]


def questions() -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(asked, paraphrases of them, (near miss, its subject)), aligned."""
    asked, para, near = [], [], []
    for i, (a, p) in enumerate(TEMPLATES):
        for x, y in TASKS if i < 2 else THINGS:
            asked.append(a.format(x))
            para.append(p.format(x))
            near.append((a.format(y), y))
    return asked, para, near


def write_home(home: Path, stub_url: str) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(
        f'[providers.stub]\nkind = "openai"\nbase_url = "{stub_url}/v1"\n\n'
        '[models.stub-m]\nprovider = "stub"\nupstream_model = "m"\nprice_in = 1.0\nprice_out = 2.0\n\n'
        '[cache]\nmode = "deterministic"\n'
    )
    keys = home / "config" / "keys.toml"
    keys.touch(mode=0o600)
    keys.write_text('[stub.k1]\nsecret = "sk-bench-0123456789abcdef"\n')


class Reply(NamedTuple):
    seconds: float
    cache: str  # x-tiqo-cache
    similarity: float | None
    text: str  # the stub echoes: an answer from the cache names the question it was stored for


def ask(raw: RawClient, question: str, control: str = "use") -> Reply:
    """One chat completion."""
    body = {"model": "stub-m", "temperature": 0, "messages": [{"role": "user", "content": question}]}
    t0 = time.perf_counter()
    answer = raw.request("POST", "/v1/chat/completions", body, headers={"x-tiqo-cache": control})
    took = time.perf_counter() - t0
    sim = raw.headers.get("x-tiqo-cache-similarity")
    text = answer["choices"][0]["message"]["content"]
    return Reply(took, raw.headers.get("x-tiqo-cache", ""), None if sim is None else float(sim), text)


def p50(xs: list[float]) -> float | None:
    return statistics.median(xs) * 1000 if xs else None


def run_daemon(home: Path, semantic: bool, threshold: float | None, fills: list[int]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_")}
    env.update(TIQO_HOME=str(home), TIQO_CACHE_SEMANTIC="1" if semantic else "0")
    if threshold is not None:
        env["TIQO_CACHE_SEMANTIC_THRESHOLD"] = str(threshold)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    proc, client = start_daemon(home, env)
    raw = RawClient(home)
    asked, para, near = questions()
    out: dict[str, Any] = {}
    try:
        for i in range(5):  # warm: the embedding model loads on the first miss
            ask(raw, f"Warm-up question number {i}?")
        miss = [ask(raw, q) for q in asked]
        hit = [ask(raw, q) for q in asked]
        out["miss_p50_ms"] = p50([r.seconds for r in miss if r.cache == "miss"])
        out["hit_p50_ms"] = p50([r.seconds for r in hit if r.cache == "hit"])
        out["misses"], out["exact_hits"] = sum(r.cache == "miss" for r in miss), sum(r.cache == "hit" for r in hit)
        if semantic:
            paraphrased = [ask(raw, q) for q in para]
            got = [(r.seconds, r.similarity) for r in paraphrased if r.cache == "semantic"]
            out["paraphrase_hits"], out["paraphrases"] = len(got), len(para)
            out["semantic_hit_p50_ms"] = p50([t for t, _ in got])
            out["paraphrase_similarity_min"] = min((s for _, s in got if s is not None), default=None)
            # Near misses are stored as they miss, so a later one may hit an earlier one on the same subject ("What
            # is the best way to X?" after "How do I X?"): fair. A hit on another subject answers the wrong question.
            out["near_false_hits"], out["near_same_subject_hits"] = [], []
            for q, subject in near:
                r = ask(raw, q)
                if r.cache == "semantic":
                    seen = f"{q!r} got the answer to {r.text[6:]!r} ({r.similarity})"
                    out["near_same_subject_hits" if subject in r.text else "near_false_hits"].append(seen)
            out["near_asked"] = len(near)
            out["scan"] = [scan(raw, home, fill, para) for fill in fills]
        ps = client.get("/tiqo/cache").json()
        keep = ("entries", "hits", "semantic_hits", "misses", "semantic_threshold")
        out["cache_stats"] = {k: ps.get(k) for k in keep}
    finally:
        raw.close()
        stop_daemon(proc, client)
    return out


def scan(raw: RawClient, home: Path, fill: int, para: list[str]) -> dict[str, Any]:
    """Fill the group up to ``fill`` entries (refresh writes without looking up), then time semantic hits and, in this
    process, the daemon's own pieces: a group's first lookup reads its vectors from SQLite, every later one is a
    search of the in-memory index (tiqo.daemon.cache.semantic_index)."""
    db = sqlite3.connect(f"file:{home / 'state' / 'tiqo.db'}?mode=ro", uri=True)
    count = "SELECT sem_group, COUNT(*) FROM cache WHERE vector IS NOT NULL GROUP BY sem_group ORDER BY 2 DESC LIMIT 1"
    group, have = db.execute(count).fetchone()
    topics = [t for pair in THINGS + TASKS for t in pair]
    for n in range(have, fill):
        ask(raw, f"Give me fact number {n} about {topics[n % len(topics)]}.", "refresh")
    group, have = db.execute(count).fetchone()
    db.close()
    got = [ask(raw, q) for q in para]
    hits = [r.seconds for r in got if r.cache == "semantic"]
    store = Store(home / "state" / "tiqo.db")
    query = np.full(384, 1 / np.sqrt(384), np.float32)
    read, search = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        index = SemanticIndex(store.cache_vectors)
        index.nearest(group, query, time.time())  # the first lookup: SQLite read, then the search
        t1 = time.perf_counter()
        index.nearest(group, query, time.time())  # every later one
        t2 = time.perf_counter()
        read.append(t1 - t0)
        search.append(t2 - t1)
    store.close()
    return {
        "entries": have,
        "semantic_hit_p50_ms": p50(hits),
        "hits": len(hits),
        "first_lookup_p50_ms": p50(read),
        "lookup_p50_ms": p50(search),
    }


def similarities(home: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_")}
    env.update(TIQO_HOME=str(home))
    proc, client = start_daemon(home, env)
    raw = RawClient(home)
    try:
        texts = [t for a, b, _ in PAIRS for t in (a, b)]
        data = raw.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": texts})["data"]
        vecs = np.array([d["embedding"] for d in data], dtype=np.float32)
    finally:
        raw.close()
        stop_daemon(proc, client)
    return [
        {"a": a, "b": b, "kind": kind, "similarity": float(vecs[2 * i] @ vecs[2 * i + 1])}
        for i, (a, b, kind) in enumerate(PAIRS)
    ]


def report(res: dict[str, Any]) -> None:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} ms"

    off, on = res["off"], res["on"]
    n, threshold = len(questions()[0]), res["threshold"]
    print(f"{n} questions through a daemon with the semantic cache off, then on (threshold {threshold}):")
    print(f"  miss (the stub answers)  off p50 {ms(off['miss_p50_ms'])}   on p50 {ms(on['miss_p50_ms'])}", end="")
    print(f"   -> the embedding adds {on['miss_p50_ms'] - off['miss_p50_ms']:+.2f} ms to a miss")
    print(f"  exact hit                off p50 {ms(off['hit_p50_ms'])}   on p50 {ms(on['hit_p50_ms'])}")
    print(
        f"  paraphrase               {on['paraphrase_hits']}/{on['paraphrases']} semantic hits, p50 "
        f"{ms(on['semantic_hit_p50_ms'])}, lowest similarity that hit {on['paraphrase_similarity_min']}"
    )
    false = on["near_false_hits"]
    listed = ": " + "; ".join(false) if false else ""
    print(f"  near miss                {len(false)}/{on['near_asked']} answered for another subject{listed}")
    same = on["near_same_subject_hits"]
    print(" " * 27 + f"{len(same)} served from the same subject asked another way{':' if same else ''}")
    for seen in same:
        print(f"                             {seen}")
    for s in on["scan"]:
        print(
            f"  group of {s['entries']:>5} entries   semantic hit p50 {ms(s['semantic_hit_p50_ms'])} "
            f"({s['hits']} hits); in the daemon: first lookup (reads SQLite) {ms(s['first_lookup_p50_ms'])}, "
            f"later ones (memory) {s['lookup_p50_ms'] * 1000:.0f} µs"
        )
    print("similarities of the pairs behind the default threshold (bundled all-MiniLM-L6-v2):")
    for p in res["pairs"]:
        print(f"  {p['similarity']:.3f}  {p['kind']:22} {p['a']!r} / {p['b']!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fill", default="1000,5000", help="group sizes to time semantic lookups at (default 1000,5000)")
    ap.add_argument("--threshold", type=float, default=None, help="cache.semantic_threshold (default: the setting's)")
    ap.add_argument("--json", action="store_true", help="print all numbers as one JSON object")
    args = ap.parse_args()
    fills = [int(x) for x in args.fill.split(",") if x]
    stub = UpstreamProcess().start()
    res: dict[str, Any] = {}
    try:
        for name, semantic in (("off", False), ("on", True)):
            home = Path(tempfile.mkdtemp(prefix="tqsc", dir="/tmp"))
            write_home(home, stub.url)
            res[name] = run_daemon(home, semantic, args.threshold, fills)
            shutil.rmtree(home, ignore_errors=True)
        home = Path(tempfile.mkdtemp(prefix="tqsc", dir="/tmp"))
        res["pairs"] = similarities(home)
        shutil.rmtree(home, ignore_errors=True)
    finally:
        stub.stop()
    res["threshold"] = res["on"]["cache_stats"]["semantic_threshold"]
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res)


if __name__ == "__main__":
    main()
