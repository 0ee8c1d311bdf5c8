"""What do Prometheus metrics cost a request?

Two measurements, numbers and ratios only (goals from issue 21: < 20 µs per request, < 2 % of the gateway's added
time; the exit status is 0 unless something crashed):

* in-process: ``Metrics.observe`` (what the recording path adds per request when ``metrics.enabled`` is on: the
  counters, both histograms, the cache counter, plus the time-to-first-token stamp) over a mix of label values
  (8 models x 3 backends x 3 outcomes x 2 tasks), best of ``--rounds`` rounds of ``--calls`` calls. Also the time to
  render the exposition the mix leaves (paid once per scrape, not per request).
* end to end: two real daemons on one provider stub (``python -m tests.upstreams``), the same config but
  ``[metrics] enabled = false`` in one, response cache off; JSON chat completions at concurrency 1 over each
  daemon's Unix socket in segments ordered off, on, on, off (ABBA: linear drift cancels), plus the stub directly
  for the gateway's added latency. Reported: p50 latency and daemon CPU per request with metrics off and on.

The ratio that matters is the in-process cost over the gateway's added time (daemon p50 - direct p50, metrics
off): the end-to-end difference between the two daemons is below the noise of a shared 2-core machine.

Run:  .venv/bin/python bench/metrics_overhead.py [--calls 20000] [--rounds 5] [--requests 400] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import gateway_overhead as gw  # noqa: E402  (its stub, daemon and timing helpers)

from tests.upstreams import UpstreamProcess  # noqa: E402
from tiqo.daemon.accounting.ledger import RequestRow  # noqa: E402
from tiqo.daemon.accounting.metrics import Metrics  # noqa: E402

GOAL_US = 20.0
GOAL_SHARE = 0.02


# ---------------------------------------------------------------------------------------------------- in-process
def request_rows(n: int) -> list[RequestRow]:
    combos = itertools.cycle(
        itertools.product(
            ("chat", "code"), ("local:llama.cpp", "alpha", "bravo"), [f"m{i}" for i in range(8)], ("ok", "error", "ok")
        )
    )
    rows = []
    for i, (task, backend, model, outcome) in zip(range(n), combos, strict=False):
        cache = ("miss", "hit", "off", "off")[i % 4]
        labels = {"task": task, "backend": backend, "model": model, "outcome": outcome, "cache": cache}
        rows.append(
            RequestRow(f"r{i}", 0.0, "ann", tokens_in=40, tokens_out=120, cost_nusd=2400, latency_ms=812.5, **labels)
        )
    return rows


def observe_cost_us(calls: int, rounds: int) -> tuple[float, float, int]:
    """Best µs per request of observe() + the TTFT stamp, the exposition's ms, and its series count."""
    rows = request_rows(calls)
    metrics = Metrics()
    best = float("inf")
    perf = time.perf_counter
    for _ in range(rounds):
        t0 = perf()
        for row in rows:
            first = perf() - t0  # the stamp Accounting.recorded takes at the first token
            metrics.observe(row, first)
        best = min(best, (perf() - t0) / calls * 1e6)
    t0 = perf()
    body, _ = metrics.exposition()
    render_ms = (perf() - t0) * 1000
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return best, render_ms, series


# ---------------------------------------------------------------------------------------------------- end to end
async def segment(target: gw.Target, n: int, pid: int) -> tuple[list[float], float]:
    sample = gw.Sample()
    await gw.run_segment(target, False, n, 1, sample, pid, pid)
    if sample.errors:
        raise RuntimeError(f"{target.name}: {sample.errors} errors: {sample.error_examples}")
    return sample.latencies, sample.daemon_cpu


async def end_to_end(stub_url: str, socks: dict[str, Path], pids: dict[str, int], n: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Content-Type": "application/json"}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(s))) for name, s in socks.items()}
    direct = aiohttp.ClientSession(timeout=timeout)
    targets = {
        name: gw.Target(name, sessions[name], "http://tiqo/v1/chat/completions", headers, {False: body})
        for name, body in ((k, gw.make_body(gw.DAEMON_MODEL, 20, False)) for k in socks)
    }
    targets["direct"] = gw.Target(
        "direct",
        direct,
        stub_url + "/v1/chat/completions",
        {**headers, "Authorization": f"Bearer {gw.STUB_KEY}"},
        {False: gw.make_body(gw.UPSTREAM_MODEL, 20, False)},
    )
    pids = {**pids, "direct": pids["off"]}
    latencies: dict[str, list[float]] = {k: [] for k in targets}
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    try:
        for name in targets:  # warm-up: pools, models of the router, caches
            await segment(targets[name], gw.WARMUP, pids[name])
        for name in ("direct", "off", "on", "on", "off", "direct"):
            lat, used = await segment(targets[name], n // 2, pids[name])
            latencies[name] += lat
            cpu[name] += used
    finally:
        for session in (*sessions.values(), direct):
            await session.close()
    return {
        name: {
            "p50_ms": statistics.median(lat) * 1000,
            "daemon_cpu_ms_per_request": cpu[name] / len(lat) * 1000 if name != "direct" else None,
        }
        for name, lat in latencies.items()
    }


def run_daemons(requests: int) -> dict[str, Any]:
    stub = UpstreamProcess()
    homes = {name: Path(tempfile.mkdtemp(prefix=f"tqm{name}", dir="/tmp")) for name in ("off", "on")}
    procs = {}
    try:
        stub.start()
        for name, home in homes.items():
            gw.write_home(home, stub.url)
            if name == "off":
                with (home / "config" / "config.toml").open("a") as fh:
                    fh.write("\n[metrics]\nenabled = false\n")
            procs[name] = gw.start_daemon(home, ["-m", "tiqo.daemon"])
        socks = {name: home / "run" / "tiqo.sock" for name, home in homes.items()}

        async def go() -> dict[str, Any]:
            pids = {name: int((await gw.wait_healthy(procs[name], socks[name], homes[name]))["pid"]) for name in homes}
            return await end_to_end(stub.url, socks, pids, requests)

        return asyncio.run(go())
    finally:
        for proc in procs.values():
            gw.stop_proc(proc)
        stub.stop()
        for home in homes.values():
            shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- report
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=20000, help="observe() calls per in-process round")
    ap.add_argument("--rounds", type=int, default=5, help="in-process rounds (the best counts)")
    ap.add_argument("--requests", type=int, default=400, help="end-to-end requests per daemon (0: skip)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    per_request_us, render_ms, series = observe_cost_us(args.calls, args.rounds)
    result: dict[str, Any] = {
        "observe_us_per_request": per_request_us,
        "exposition_ms": render_ms,
        "exposition_series": series,
    }
    if args.requests:
        e2e = run_daemons(args.requests)
        added_ms = e2e["off"]["p50_ms"] - e2e["direct"]["p50_ms"]
        result |= {
            "end_to_end": e2e,
            "gateway_added_p50_ms": added_ms,
            "share_of_added_time": per_request_us / 1000 / added_ms if added_ms > 0 else None,
            "share_of_daemon_cpu": per_request_us / 1000 / e2e["off"]["daemon_cpu_ms_per_request"],
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"metrics on, per request (in-process): {per_request_us:.2f} µs  (goal < {GOAL_US:g} µs)")
    print(f"exposition of {series} samples: {render_ms:.2f} ms per scrape")
    if args.requests:
        for name in ("direct", "off", "on"):
            row = result["end_to_end"][name]
            cpu = row["daemon_cpu_ms_per_request"]
            print(f"  {name:>6}: p50 {row['p50_ms']:.3f} ms" + (f", daemon CPU {cpu:.3f} ms/request" if cpu else ""))
        share = result["share_of_added_time"]
        print(f"gateway's added p50 (metrics off): {result['gateway_added_p50_ms']:.3f} ms")
        if share is not None:
            print(f"metrics / added time: {share * 100:.2f} %  (goal < {GOAL_SHARE * 100:g} %)")
        print(f"metrics / daemon CPU per request: {result['share_of_daemon_cpu'] * 100:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
