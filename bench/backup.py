"""How long does `tiqo backup` take, how big is the archive, and how long do the daemon's other requests wait
meanwhile?

A daemon on a private home holding ``--rows`` ledger rows (written into its database before it starts) and one
collection of ``--vectors`` random ``--dim``-dimensional vectors (upserted through the API in batches of 100, so
the table has many versions). A probe thread asks ``GET /tiqo/health`` (answered on the event loop, so its latency
is how long any request waits for the loop) back to back, first with the daemon idle, then during each backup; a
backup is taken ``--rounds`` times as .tar and as .tar.gz. Prints seconds, bytes, and the probe's p50 / p99 / max.

Run:  .venv/bin/python bench/backup.py [--rows 100000] [--vectors 50000] [--dim 384] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import RawClient, start_daemon, stop_daemon

BATCH = 100  # vectors per upsert: under daemon.max_json_values at 384 dimensions


def fill_ledger(home: Path, rows: int) -> None:
    from tiqo.daemon.state.store import Store

    store = Store(home / "state" / "tiqo.db")
    now = time.time()
    store.db.execute("BEGIN")
    store.db.executemany(
        "INSERT INTO requests (id, ts, user, task, backend, model, tokens_in, tokens_out, outcome, content) "
        "VALUES (?, ?, 'bench', 'chat', 'external', 'm', 20, 40, 'ok', ?)",
        ((f"req_{i:024d}", now - i, "a question and its answer " * 8) for i in range(rows)),
    )
    store.db.execute("COMMIT")
    store.close()


def fill_vectors(client: Any, n: int, dim: int) -> None:
    client.post("/tiqo/vectors", json={"name": "bench", "dimension": dim}).raise_for_status()
    rng = random.Random(1)
    for start in range(0, n, BATCH):
        ids = range(start, min(n, start + BATCH))
        batch = [{"id": f"v{i}", "values": [round(rng.uniform(-1, 1), 4) for _ in range(dim)]} for i in ids]
        r = client.post("/tiqo/vectors/bench/upsert", json={"vectors": batch})
        if r.status_code >= 300:
            sys.exit(f"upsert: {r.status_code} {r.text[:300]}")


def probe(home: Path, stop: threading.Event, out: list[float]) -> None:
    raw = RawClient(home)
    while not stop.is_set():
        t0 = time.perf_counter()
        raw.request("GET", "/tiqo/health")
        out.append(time.perf_counter() - t0)
    raw.close()


def measured(home: Path, action: Any) -> tuple[Any, list[float]]:
    """Run ``action()`` with the probe asking meanwhile; its result and the probe's latencies."""
    stop, lat = threading.Event(), []  # type: ignore[var-annotated]
    thread = threading.Thread(target=probe, args=(home, stop, lat))
    thread.start()
    try:
        result = action()
    finally:
        stop.set()
        thread.join()
    return result, lat


def summary(lat: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in lat)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
        "max_ms": round(ms[-1], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--vectors", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tqb", dir="/tmp"))
    out_dir = Path(tempfile.mkdtemp(prefix="tqb-out"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_")} | {"TIQO_HOME": str(home)}
    os.umask(0o077)
    fill_ledger(home, args.rows)
    proc, client = start_daemon(home, env)
    report: dict[str, Any] = {"rows": args.rows, "vectors": args.vectors, "dim": args.dim}
    try:
        fill_vectors(client, args.vectors, args.dim)
        _, idle = measured(home, lambda: time.sleep(3))
        report["idle_probe"] = summary(idle)
        for suffix in ("tar", "tar.gz"):
            runs = []
            for i in range(args.rounds):
                dest = out_dir / f"b{i}.{suffix}"
                body, lat = measured(home, lambda d=dest: client.post("/tiqo/backup", json={"path": str(d)}).json())
                runs.append({"seconds": body["seconds"], "bytes": body["bytes"], "probe": summary(lat)})
                dest.unlink()
            report[suffix] = runs
        report["db_bytes"] = (home / "state" / "tiqo.db").stat().st_size
        report["vectors_bytes"] = sum(p.stat().st_size for p in (home / "state" / "vectors").rglob("*") if p.is_file())
    finally:
        stop_daemon(proc, client)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"state: {args.rows} ledger rows ({report['db_bytes'] / 1e6:.1f} MB database), {args.vectors} x {args.dim} "
          f"vectors ({report['vectors_bytes'] / 1e6:.1f} MB)")  # fmt: skip
    print(f"probe idle: {report['idle_probe']}")
    for suffix in ("tar", "tar.gz"):
        for run in report[suffix]:
            print(f".{suffix}: {run['seconds']:.2f} s, {run['bytes'] / 1e6:.1f} MB; probe during it: {run['probe']}")


if __name__ == "__main__":
    main()
