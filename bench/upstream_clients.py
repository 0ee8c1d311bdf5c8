"""Which HTTP client should the daemon use to talk to cloud providers: aiohttp or httpx?

Starts the provider stub (``python -m tests.upstreams --port 0``) in its own process, so it does not share a
GIL or a core's time slices with the measuring client, then in this one asyncio process (uvloop when
importable) sends streaming OpenAI chat completions (``stream: true`` with ``include_usage``; every SSE line is
read, and each stream must end with ``data: [DONE]``) through:

* ``aiohttp.ClientSession``  - one pooled session, ``TCPConnector(limit=256)``;
* ``httpx.AsyncClient``      - one pooled client, ``Limits(max_connections=256, max_keepalive_connections=256)``.

at concurrency 1 and 64. For each it reports p50/p99 latency (request sent to last line read), requests/s,
CPU seconds per request of this (client) process (``time.process_time`` delta / N) and of the stub process,
and the httpx/aiohttp ratio of client CPU per request. Both clients send the same pre-encoded body, so JSON
encoding is not measured. Numbers only, no asserts.

Run:  .venv/bin/python bench/upstream_clients.py [--requests N] [--rounds R] [--words W] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.upstreams import UpstreamProcess  # noqa: E402

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is a daemon dependency
    psutil = None

CLIENTS = ("aiohttp", "httpx")
DEFAULT_N = {1: 300, 64: 2000}
HEADERS = {"Authorization": "Bearer bench-key", "Content-Type": "application/json", "Accept": "text/event-stream"}

OneRequest = Callable[[], Awaitable[int]]


def make_body(words: int) -> bytes:
    text = " ".join(f"word{i}" for i in range(words))
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": text}],
    }
    return json.dumps(body).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.asynccontextmanager
async def open_client(kind: str, url: str, body: bytes):  # type: ignore[no-untyped-def]
    """Yield an async ``one()`` that streams one completion and returns the number of SSE lines read."""
    if kind == "aiohttp":
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one_aiohttp() -> int:
                lines, done = 0, False
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"aiohttp: HTTP {resp.status}")
                    async for line in resp.content:
                        lines += 1
                        if line.startswith(b"data: [DONE]"):
                            done = True
                if not done:
                    raise RuntimeError("aiohttp: stream ended without [DONE]")
                return lines

            yield one_aiohttp
    else:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:

            async def one_httpx() -> int:
                lines, done = 0, False
                async with client.stream("POST", url, content=body, headers=HEADERS) as resp:
                    if resp.status_code != 200:
                        raise RuntimeError(f"httpx: HTTP {resp.status_code}")
                    async for line in resp.aiter_lines():
                        lines += 1
                        if line.startswith("data: [DONE]"):
                            done = True
                if not done:
                    raise RuntimeError("httpx: stream ended without [DONE]")
                return lines

            yield one_httpx


def server_cpu(pid: int | None) -> float:
    if psutil is None or pid is None:
        return float("nan")
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def measure(kind: str, url: str, body: bytes, n: int, concurrency: int, stub_pid: int | None) -> dict[str, Any]:
    async with open_client(kind, url, body) as one:
        # Warm up: open the pool's connections and let both sides settle.
        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        latencies: list[float] = []
        lines_seen: list[int] = []
        remaining = iter(range(n))

        async def worker() -> None:
            perf = time.perf_counter
            for _ in remaining:
                t0 = perf()
                lines_seen.append(await one())
                latencies.append(perf() - t0)

        srv0 = server_cpu(stub_pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        srv = server_cpu(stub_pid) - srv0
    return {
        "client": kind,
        "concurrency": concurrency,
        "requests": n,
        "sse_lines_per_request": statistics.median(lines_seen),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "rps": n / wall,
        "client_cpu_ms_per_req": cpu / n * 1e3,
        "client_cpu_s_per_req": cpu / n,
        "stub_cpu_ms_per_req": srv / n * 1e3,
        "wall_s": wall,
    }


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in rows)
    out["rounds"] = len(rows)
    return out


async def run(args: argparse.Namespace, url: str, stub_pid: int | None) -> list[dict[str, Any]]:
    body = make_body(args.words)
    results: list[dict[str, Any]] = []
    for concurrency in (1, 64):
        n = args.requests or DEFAULT_N[concurrency]
        per_client: dict[str, list[dict[str, Any]]] = {k: [] for k in CLIENTS}
        for r in range(args.rounds):
            order = CLIENTS if r % 2 == 0 else CLIENTS[::-1]
            for kind in order:
                per_client[kind].append(await measure(kind, target(url), body, n, concurrency, stub_pid))
        results.extend(median_rows(per_client[k]) for k in CLIENTS)
    return results


def target(url: str) -> str:
    return url + "/v1/chat/completions"


def print_table(results: list[dict[str, Any]], ratios: dict[str, float], env: dict[str, Any]) -> None:
    print(
        f"upstream client benchmark: python {env['python']}, loop {env['loop']}, aiohttp {env['aiohttp']}, "
        f"httpx {env['httpx']}, {env['sse_lines_per_request']} SSE lines/request, {env['cpus']} CPUs"
    )
    header = (
        f"{'client':<8} {'conc':>4} {'N':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
        f"{'cpu ms/req':>11} {'stub ms/req':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['client']:<8} {r['concurrency']:>4} {r['requests']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['rps']:>8.0f} {r['client_cpu_ms_per_req']:>11.3f} {r['stub_cpu_ms_per_req']:>11.3f}"
        )
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--requests", type=int, default=None, help="requests per measurement (default 300 at c=1, 2000 at c=64)"
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat each measurement, alternating client order; medians")
    ap.add_argument("--words", type=int, default=24, help="words in the prompt; the stub streams one piece per word")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()

    factory = None
    loop_name = "asyncio"
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            factory, loop_name = uvloop.new_event_loop, "uvloop"

    with UpstreamProcess() as stub, asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(run(args, stub.url, stub.pid))

    by = {(r["client"], r["concurrency"]): r for r in results}
    ratios = {
        f"httpx/aiohttp client CPU per request, c={c}": by[("httpx", c)]["client_cpu_s_per_req"]
        / by[("aiohttp", c)]["client_cpu_s_per_req"]
        for c in (1, 64)
    }
    env = {
        "python": platform.python_version(),
        "loop": loop_name,
        "aiohttp": aiohttp.__version__,
        "httpx": httpx.__version__,
        "cpus": len(psutil.Process().cpu_affinity()) if psutil is not None else None,
        "sse_lines_per_request": results[0]["sse_lines_per_request"],
        "words": args.words,
    }
    if args.json:
        print(json.dumps({"env": env, "results": results, "ratios": ratios}, indent=2))
    else:
        print_table(results, ratios, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
