"""What does the tiqo daemon add in front of an external provider?

Starts the provider stub (``python -m tests.upstreams --port 0``) in its own process and a real daemon
(``python -m tiqo.daemon``) in a private temp TIQO_HOME whose config defines provider ``stub`` (OpenAI wire,
``base_url`` = the stub), one key for it, and model ``stub-m`` (upstream model ``m``), with the response cache
off so every request really goes upstream. Then, in this one asyncio process (uvloop when importable), aiohttp
sends the SAME chat completion two ways:

* direct:  ``POST {stub}/v1/chat/completions`` (model ``m``, ``Authorization: Bearer ...``), TCP;
* daemon:  ``POST http://tiqo/v1/chat/completions`` (model ``stub-m``) over the daemon's Unix socket.

Scenarios: JSON (``stream: false``; latency = request sent to body read) and SSE (``stream: true``; time to
first content chunk and latency to ``data: [DONE]``), each at concurrency 1 and 64. Every scenario runs its
requests in four segments ordered direct, daemon, daemon, direct (ABBA, so linear drift cancels); ``--rounds``
repeats it with the order reversed every other round and reports medians over rounds. Errors: any non-200,
exception, malformed JSON answer, or stream without ``[DONE]``.

Daemon CPU: user+system CPU time of the daemon process (pid from ``GET /tiqo/health``, via psutil) read around
its segments -> ms per request and, for streams, ms per streamed event (SSE data lines without ``[DONE]``).
The stub's and this client's CPU per request are shown for context, and so is the CPU that OTHER processes used
meanwhile (a warning is printed above 0.2 CPUs: other jobs on a 2-core machine inflate every number). The reply is
``"echo: " + prompt``, one SSE chunk per word, so ``--words`` sets the number of streamed events.

Goals (from the issue; informational, the exit status is 0 unless something crashed):
added p50 latency at c=1 <= 1.5 ms (JSON), added p50 TTFT <= 2 ms (SSE, c=1), daemon CPU per streamed event
<= 0.1 ms (worst SSE scenario), no errors at c=64.

Run:  .venv/bin/python bench/gateway_overhead.py [--requests-c1 300] [--requests-c64 2000] [--words 20]
                                                 [--rounds 1] [--json] [--keep] [--only json-c1,sse-c1]
With ``--proxy`` a third path runs beside them: ``bench/_proxy.py``, a minimal pass-through proxy (aiohttp, its own
process and Unix socket, one pooled client session) that forwards the body to the stub and passes the answer back,
the floor any gateway pays. Its CPU is read like the daemon's, and the daemon is then also judged against it:
daemon CPU per JSON request <= 2x the proxy's (c=1) and JSON throughput at c=64 >= 0.5x the proxy's.

Profile the daemon meanwhile: ``--daemon-cmd "-m cProfile -o /tmp/d.prof -m tiqo.daemon"`` (python arguments used
in place of ``-m tiqo.daemon``; the profile is written when the daemon exits on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.upstreams import UpstreamProcess  # noqa: E402

STUB_KEY = "sk-bench-0123456789abcdef"
UPSTREAM_MODEL, DAEMON_MODEL = "m", "stub-m"
GOAL_ADDED_P50_MS = 1.5
GOAL_ADDED_TTFT_MS = 2.0
GOAL_CPU_PER_EVENT_MS = 0.1
GOAL_CPU_VS_PROXY = 2.0
GOAL_RPS_VS_PROXY = 0.5
WARMUP = 50


# ---------------------------------------------------------------------------------------------------- setup


def write_home(home: Path, stub_url: str) -> None:
    config = f"""\
[providers.stub]
kind = "openai"
base_url = "{stub_url}/v1"

[models.stub-m]
provider = "stub"
upstream_model = "{UPSTREAM_MODEL}"
price_in = 1.0
price_out = 2.0

[cache]
mode = "off"
"""
    keys = f"""\
[stub.k1]
secret = "{STUB_KEY}"
"""
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(config)
    keys_file = home / "config" / "keys.toml"
    keys_file.touch(mode=0o600)
    keys_file.chmod(0o600)
    keys_file.write_text(keys)


def daemon_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIQO_")}
    env.update(TIQO_HOME=str(home), NO_COLOR="1", TERM="dumb")
    env.pop("XDG_RUNTIME_DIR", None)
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def start_daemon(home: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    with (home / "logs" / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=daemon_env(home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def wait_healthy(
    proc: subprocess.Popen[bytes], sock: Path, home: Path, timeout: float = 60, path: str = "/tiqo/health"
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}; see {home}/logs/daemon.log")
        if sock.exists():
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                per_try = aiohttp.ClientTimeout(total=5)
                async with (
                    aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)), timeout=per_try) as s,
                    s.get("http://tiqo" + path) as r,
                ):
                    if r.status == 200:
                        return await r.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise RuntimeError(f"daemon did not answer /tiqo/health within {timeout:g}s; see {home}/logs/daemon.log")


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs)."""
    t = psutil.cpu_times()._asdict()
    # guest time is already part of user time on Linux; idle, iowait and steal are not work done here
    skip = ("idle", "iowait", "steal", "guest", "guest_nice")
    return float(sum(v for k, v in t.items() if k not in skip))


class ForeignLoad:
    """How many CPUs' worth of work other processes (not client, daemon or stub) did meanwhile: other jobs on the
    machine skew every number, so it is reported next to them."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.busy0 = busy_cpu_s()
        self.ours0 = sum(cpu_s(p) for p in pids)

    def cores(self) -> float:
        wall = time.perf_counter() - self.t0
        ours = sum(cpu_s(p) for p in self.pids) - self.ours0
        return max(0.0, (busy_cpu_s() - self.busy0 - ours) / wall) if wall > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------- measuring


def make_body(model: str, words: int, stream: bool) -> bytes:
    text = " ".join(f"word{i}" for i in range(words))
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    return json.dumps(body, separators=(",", ":")).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Target:
    name: str
    session: aiohttp.ClientSession
    url: str
    headers: dict[str, str]
    bodies: dict[bool, bytes]
    pid: int | None = None  # the gateway process whose CPU the "gw cpu" column shows (daemon or proxy)


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    wall: float = 0.0
    daemon_cpu: float = 0.0
    stub_cpu: float = 0.0
    client_cpu: float = 0.0
    n: int = 0


def _has_content(line: bytes) -> bool:
    """True for an OpenAI chunk line whose first choice's delta carries non-empty text."""
    try:
        chunk = json.loads(line[5:])
    except ValueError:
        return False
    choices = chunk.get("choices") or ()
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def one_json(t: Target, s: Sample) -> None:
    perf = time.perf_counter
    t0 = perf()
    async with t.session.post(t.url, data=t.bodies[False], headers=t.headers) as resp:
        raw = await resp.read()
    latency = perf() - t0
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
    answer = json.loads(raw)
    if not answer["choices"][0]["message"].get("content"):
        raise RuntimeError(f"empty answer: {raw[:200]!r}")
    s.latencies.append(latency)


async def one_stream(t: Target, s: Sample) -> None:
    perf = time.perf_counter
    t0 = perf()
    ttft: float | None = None
    events, done = 0, False
    async with t.session.post(t.url, data=t.bodies[True], headers=t.headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            if line[5:].strip() == b"[DONE]":
                done = True
                continue
            events += 1
            if ttft is None and _has_content(line):
                ttft = perf() - t0
    latency = perf() - t0
    if not done:
        raise RuntimeError(f"stream ended without [DONE] after {events} events")
    if ttft is None:
        raise RuntimeError("stream carried no content chunk")
    s.latencies.append(latency)
    s.ttfts.append(ttft)
    s.events.append(events)


async def run_segment(
    t: Target, stream: bool, n: int, concurrency: int, s: Sample, daemon_pid: int, stub_pid: int
) -> None:
    one = one_stream if stream else one_json
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            try:
                await one(t, s)
            except Exception as exc:  # every failure is counted, a few are shown
                s.errors += 1
                if len(s.error_examples) < 3:
                    s.error_examples.append(f"{type(exc).__name__}: {exc}"[:300])

    gateway_pid = t.pid or daemon_pid
    d0, st0, c0 = cpu_s(gateway_pid), cpu_s(stub_pid), time.process_time()
    w0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    s.wall += time.perf_counter() - w0
    s.client_cpu += time.process_time() - c0
    s.daemon_cpu += cpu_s(gateway_pid) - d0
    s.stub_cpu += cpu_s(stub_pid) - st0
    s.n += n


def summarize(s: Sample, path: str, stream: bool, concurrency: int) -> dict[str, Any]:
    n = max(s.n, 1)
    ev = statistics.median(s.events) if s.events else float("nan")
    row: dict[str, Any] = {
        "path": path,
        "stream": stream,
        "concurrency": concurrency,
        "requests": s.n,
        "errors": s.errors,
        "error_examples": s.error_examples,
        "p50_ms": percentile(s.latencies, 0.50) * 1e3,
        "p99_ms": percentile(s.latencies, 0.99) * 1e3,
        "mean_ms": statistics.fmean(s.latencies) * 1e3 if s.latencies else float("nan"),
        "ttft_p50_ms": percentile(s.ttfts, 0.50) * 1e3 if stream else None,
        "ttft_p99_ms": percentile(s.ttfts, 0.99) * 1e3 if stream else None,
        "events_per_request": ev if stream else None,
        "rps": s.n / s.wall if s.wall else float("nan"),
        "client_cpu_ms_per_req": s.client_cpu / n * 1e3,
        "stub_cpu_ms_per_req": s.stub_cpu / n * 1e3,
        "daemon_cpu_ms_per_req": s.daemon_cpu / n * 1e3,
    }
    row["daemon_cpu_ms_per_event"] = row["daemon_cpu_ms_per_req"] / ev if stream and ev else None
    return row


async def scenario(
    targets: dict[str, Target], stream: bool, concurrency: int, n: int, reverse: bool, daemon_pid: int, stub_pid: int
) -> dict[str, dict[str, Any]]:
    """One round of one scenario: ABBA segments (BAAB when ``reverse``; ABCCBA with the proxy), n requests per path
    in all."""
    paths = tuple(targets)
    samples = {p: Sample() for p in paths}
    order = paths[::-1] if reverse else paths
    half = [n // 2, n - n // 2]
    pids = (os.getpid(), daemon_pid, stub_pid, *(t.pid for t in targets.values() if t.pid))
    foreign = ForeignLoad(tuple(dict.fromkeys(pids)))
    for path, size in [(p, half[0]) for p in order] + [(p, half[1]) for p in order[::-1]]:
        await run_segment(targets[path], stream, size, concurrency, samples[path], daemon_pid, stub_pid)
    load = foreign.cores()
    rows = {p: summarize(samples[p], p, stream, concurrency) for p in paths}
    for row in rows.values():
        row["foreign_load_cores"] = load
    return rows


SCENARIOS = ("json-c1", "json-c64", "sse-c1", "sse-c64")


def scenario_name(stream: bool, concurrency: int) -> str:
    return f"{'sse' if stream else 'json'}-c{concurrency}"


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in rows)
    out["errors"] = sum(r["errors"] for r in rows)
    out["requests"] = sum(r["requests"] for r in rows)
    out["error_examples"] = [e for r in rows for e in r["error_examples"]][:3]
    out["rounds"] = len(rows)
    return out


async def reset_stub(session: aiohttp.ClientSession, stub_url: str) -> None:
    """Forget the stub's request log, so it does not grow (and slow its GC) over the run."""
    async with session.post(stub_url + "/_stub/control", json={"reset": True}) as r:
        r.raise_for_status()


async def measure(
    args: argparse.Namespace, stub_url: str, sock: Path, daemon_pid: int, stub_pid: int, proxy: tuple[Path, int] | None
) -> list[Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    direct_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout)
    daemon_session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock), limit=256), timeout=timeout)
    json_h = {"Content-Type": "application/json"}
    targets = {
        "direct": Target(
            "direct",
            direct_session,
            stub_url + "/v1/chat/completions",
            {**json_h, "Authorization": f"Bearer {STUB_KEY}"},
            {s: make_body(UPSTREAM_MODEL, args.words, s) for s in (False, True)},
        ),
        "daemon": Target(
            "daemon",
            daemon_session,
            "http://tiqo/v1/chat/completions",
            json_h,
            {s: make_body(DAEMON_MODEL, args.words, s) for s in (False, True)},
            daemon_pid,
        ),
    }
    if proxy is not None:
        proxy_session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(proxy[0]), limit=256), timeout=timeout
        )
        targets["proxy"] = Target(
            "proxy",
            proxy_session,
            "http://proxy/v1/chat/completions",
            json_h,
            {s: make_body(UPSTREAM_MODEL, args.words, s) for s in (False, True)},
            proxy[1],
        )
    paths = tuple(targets)
    results: list[dict[str, Any]] = []
    try:
        # Warm-up: both paths, both modes, sequential and concurrent (opens the pools' connections).
        for stream in (False, True):
            for path in paths:
                warm = Sample()
                await run_segment(targets[path], stream, WARMUP, 1, warm, daemon_pid, stub_pid)
                await run_segment(targets[path], stream, 128, 64, warm, daemon_pid, stub_pid)
                if warm.errors:
                    raise RuntimeError(f"warm-up {path} stream={stream}: {warm.errors} errors: {warm.error_examples}")
        for stream in (False, True):
            for concurrency, n in ((1, args.requests_c1), (64, args.requests_c64)):
                if scenario_name(stream, concurrency) not in args.only:
                    continue
                per_path: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
                for r in range(args.rounds):
                    await reset_stub(direct_session, stub_url)
                    got = await scenario(targets, stream, concurrency, n, r % 2 == 1, daemon_pid, stub_pid)
                    for p in paths:
                        per_path[p].append(got[p])
                    if not args.json:
                        d, g = got["direct"], got["daemon"]
                        print(
                            f"  round {r + 1}/{args.rounds} {'sse ' if stream else 'json'} c={concurrency:<2}: "
                            f"p50 {d['p50_ms']:.2f} -> {g['p50_ms']:.2f} ms"
                            + (f" (proxy {got['proxy']['p50_ms']:.2f} ms)" if "proxy" in got else "")
                            + f", errors {d['errors']}/{g['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
                results.append(
                    {
                        "stream": stream,
                        "concurrency": concurrency,
                        "paths": list(paths),
                        **{p: median_rows(per_path[p]) for p in paths},
                        "rounds_added_p50_ms": [
                            g["p50_ms"] - d["p50_ms"]
                            for d, g in zip(per_path["direct"], per_path["daemon"], strict=True)
                        ],
                    }
                )
    finally:
        for t in targets.values():
            await t.session.close()
    for res in results:
        d, g = res["direct"], res["daemon"]
        res["added_p50_ms"] = g["p50_ms"] - d["p50_ms"]
        res["added_p99_ms"] = g["p99_ms"] - d["p99_ms"]
        res["added_mean_ms"] = g["mean_ms"] - d["mean_ms"]
        res["added_ttft_p50_ms"] = g["ttft_p50_ms"] - d["ttft_p50_ms"] if res["stream"] else None
        if "proxy" in res:
            x = res["proxy"]
            res["proxy_added_p50_ms"] = x["p50_ms"] - d["p50_ms"]
            res["cpu_vs_proxy"] = g["daemon_cpu_ms_per_req"] / x["daemon_cpu_ms_per_req"]
            res["rps_vs_proxy"] = g["rps"] / x["rps"]
    return results


# ---------------------------------------------------------------------------------------------------- report


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/MISS per goal, for the goals whose scenarios ran (``--only``)."""
    by = {(r["stream"], r["concurrency"]): r for r in results}
    per_event = [r["daemon"]["daemon_cpu_ms_per_event"] for r in results if r["stream"]]
    c64 = [r for r in results if r["concurrency"] == 64]
    rows: list[tuple[str, float | int, str, float | int, str]] = []  # (goal, value, bound, limit, unit)
    if (False, 1) in by:
        rows.append(("added p50 latency, JSON, c=1", by[(False, 1)]["added_p50_ms"], "<=", GOAL_ADDED_P50_MS, "ms"))
    if (True, 1) in by:
        ttft = by[(True, 1)]["added_ttft_p50_ms"]
        rows.append(("added p50 time to first chunk, SSE, c=1", ttft, "<=", GOAL_ADDED_TTFT_MS, "ms"))
    if per_event:
        worst = max(per_event)
        rows.append(("daemon CPU per streamed event (worst SSE scenario)", worst, "<=", GOAL_CPU_PER_EVENT_MS, "ms"))
    if c64:
        errors = sum(r["daemon"]["errors"] + r["direct"]["errors"] for r in c64)
        rows.append(("errors at c=64 (JSON + SSE, both paths)", errors, "<=", 0, ""))
    if "cpu_vs_proxy" in by.get((False, 1), {}):
        ratio = by[(False, 1)]["cpu_vs_proxy"]
        rows.append(("daemon CPU per JSON request / the proxy's, c=1", ratio, "<=", GOAL_CPU_VS_PROXY, "x"))
    if "rps_vs_proxy" in by.get((False, 64), {}):
        ratio = by[(False, 64)]["rps_vs_proxy"]
        rows.append(("daemon throughput / the proxy's, JSON c=64 (at least)", ratio, ">=", GOAL_RPS_VS_PROXY, "x"))
    return [
        {
            "goal": name,
            "value": value,
            "limit": limit,
            "unit": unit,
            "bound": bound,
            "pass": value <= limit if bound == "<=" else value >= limit,
        }
        for name, value, bound, limit, unit in rows
    ]


def print_report(env: dict[str, Any], results: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> None:
    print(
        f"gateway overhead: python {env['python']}, loop {env['loop']}, aiohttp {env['aiohttp']}, {env['cpus']} CPUs, "
        f"{env['words']}-word prompt -> {env['events_per_stream']} SSE events/stream, {env['rounds']} round(s)"
    )
    header = (
        f"{'scenario':<9} {'path':<7} {'N':>6} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'req/s':>7} "
        f"{'gw cpu':>10} {'cpu/event':>9} {'stub cpu':>8} {'client cpu':>10}"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        label = f"{'sse' if res['stream'] else 'json'} c={res['concurrency']}"
        for p in res["paths"]:
            r = res[p]
            ttft = f"{r['ttft_p50_ms']:7.2f}" if r["ttft_p50_ms"] is not None else f"{'-':>7}"
            dcpu = f"{r['daemon_cpu_ms_per_req']:10.3f}" if p != "direct" else f"{'-':>10}"
            per_ev = r["daemon_cpu_ms_per_event"]
            pev = f"{per_ev:9.4f}" if p != "direct" and per_ev is not None else f"{'-':>9}"
            print(
                f"{label:<9} {p:<7} {r['requests']:>6} {r['errors']:>4} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                f"{ttft} {r['rps']:7.0f} {dcpu} {pev} {r['stub_cpu_ms_per_req']:8.3f} "
                f"{r['client_cpu_ms_per_req']:10.3f}"
            )
        ttft_add = f", ttft p50 {res['added_ttft_p50_ms']:+.2f}" if res["stream"] else ""
        print(
            f"{'':<9} {'added':<7} p50 {res['added_p50_ms']:+.2f} ms, p99 {res['added_p99_ms']:+.2f} ms, "
            f"mean {res['added_mean_ms']:+.2f} ms{ttft_add}; "
            f"req/s x{res['daemon']['rps'] / res['direct']['rps']:.2f}; "
            f"other processes' load {res['daemon']['foreign_load_cores']:.2f} CPUs"
        )
        if "proxy" in res:
            print(
                f"{'':<9} {'proxy':<7} adds p50 {res['proxy_added_p50_ms']:+.2f} ms; daemon vs proxy: "
                f"cpu/req x{res['cpu_vs_proxy']:.2f}, req/s x{res['rps_vs_proxy']:.2f}"
            )
        for p in res["paths"]:
            for ex in res[p]["error_examples"]:
                print(f"{'':<9} {p} error: {ex}")
    print("(cpu columns: ms of CPU per request of that process; gw cpu = the daemon's or the proxy's; cpu/event =")
    print(" gw cpu / SSE events per request)")
    worst = max((r["daemon"]["foreign_load_cores"] for r in results), default=0.0)
    if worst > 0.2:
        print(
            f"WARNING: other processes used up to {worst:.2f} of {env['cpus']} CPUs during the measurement; "
            "latencies and CPU times are inflated - rerun on a quiet machine"
        )
    print()
    print("goals:")
    for v in verdicts:
        value = f"{v['value']:.3f} {v['unit']}".strip() if isinstance(v["value"], float) else str(v["value"])
        limit = f"{v['limit']} {v['unit']}".strip()
        print(f"  {'PASS' if v['pass'] else 'MISS'}  {v['goal']}: {value} (goal {v['bound']} {limit})")


# ---------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests-c1", type=int, default=300, help="requests per path per round at concurrency 1")
    ap.add_argument("--requests-c64", type=int, default=2000, help="requests per path per round at concurrency 64")
    ap.add_argument("--words", type=int, default=20, help="words in the prompt; the stub streams one chunk per word")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each scenario (alternating order); report medians")
    ap.add_argument("--keep", action="store_true", help="leave the temp TIQO_HOME (config, logs, state) in place")
    ap.add_argument("--json", action="store_true", help="print all numbers as JSON instead of the table")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--proxy", action="store_true", help="also measure a minimal pass-through proxy (bench/_proxy.py)")
    ap.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})",
    )
    ap.add_argument(
        "--daemon-cmd",
        default="-m tiqo.daemon",
        help="python arguments that start the daemon (e.g. '-m cProfile -o /tmp/d.prof -m tiqo.daemon')",
    )
    args = ap.parse_args()
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not args.only or args.only - set(SCENARIOS):
        ap.error(f"--only takes some of {','.join(SCENARIOS)}")

    factory, loop_name = None, "asyncio"
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            factory, loop_name = uvloop.new_event_loop, "uvloop"

    home = Path(tempfile.mkdtemp(prefix="tqgw", dir="/tmp"))
    sock = home / "run" / "tiqo.sock"
    stub = UpstreamProcess()
    daemon: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    try:
        stub.start()
        assert stub.pid is not None
        write_home(home, stub.url)
        daemon = start_daemon(home, args.daemon_cmd.split())
        proxy_sock = home / "proxy.sock"
        if args.proxy:
            argv = [str(ROOT / "bench" / "_proxy.py"), "--socket", str(proxy_sock), "--upstream", stub.url]
            proxy = start_daemon(home, [*argv, "--key", STUB_KEY])
        with asyncio.Runner(loop_factory=factory) as runner:
            health = runner.run(wait_healthy(daemon, sock, home))
            daemon_pid = int(health["pid"])
            if proxy is not None:
                runner.run(wait_healthy(proxy, proxy_sock, home, path="/health"))
            proxied = (proxy_sock, proxy.pid) if proxy is not None else None
            results = runner.run(measure(args, stub.url, sock, daemon_pid, stub.pid, proxied))
    finally:
        stop_proc(proxy)
        stop_proc(daemon)
        stub.stop()
        if args.keep:
            print(f"kept TIQO_HOME {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    verdicts = goals(results)
    stream_rows = [r for r in results if r["stream"]]
    env = {
        "python": platform.python_version(),
        "loop": loop_name,
        "aiohttp": aiohttp.__version__,
        "cpus": len(psutil.Process().cpu_affinity() or []) or os.cpu_count(),
        "words": args.words,
        "events_per_stream": stream_rows[0]["daemon"]["events_per_request"] if stream_rows else None,
        "rounds": args.rounds,
        "requests_c1": args.requests_c1,
        "requests_c64": args.requests_c64,
        "daemon_returncode": daemon.returncode if daemon is not None else None,
    }
    if args.json:
        print(json.dumps({"env": env, "results": results, "goals": verdicts}, indent=2))
    else:
        print_report(env, results, verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
