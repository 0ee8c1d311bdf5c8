"""What does serving speech through the tiqo daemon cost, compared with faster-whisper and piper in-process?

Starts a real daemon (``python -m tiqo.daemon``) in a private temp TIQO_HOME, loads the bundled Whisper tiny.en and
the Piper voice en_US-joe-medium in it (keep_alive -1), and loads the same two models in this process with the same
settings (Whisper: CPU, int8, the daemon's n_threads from /tiqo/ps, beam 5, VAD, language en). Alternating sides:

* STT: ~35 s of speech that piper makes from a fixed text (a WAV) goes to POST /v1/audio/transcriptions (multipart,
  json) vs ``decode_audio`` + ``WhisperModel.transcribe`` here. Real-time factor = seconds taken / audio seconds.
* TTS: a fixed 10-sentence text goes to POST /v1/audio/speech (wav, then mp3, streamed): time to the first body
  chunk and to the last, vs ``PiperVoice.synthesize`` of the whole text here (all chunks).

Also the daemon's RSS with both models loaded and each model's load time. Numbers only, no asserts.

Run:  .venv/bin/python bench/voice.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import psutil
from _daemon import start_daemon, stop_daemon
from faster_whisper import WhisperModel, decode_audio
from piper import PiperVoice

from tiqo.daemon.catalog.bundled import JOE, WHISPER_TINY, bundled_models

STT_TEXT = (
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every evening the keeper "
    "climbed the narrow stairs, trimmed the wick, and polished the great glass lens until it shone. Ships passing "
    "in the night trusted that steady beam to guide them safely around the rocks. One winter a terrible storm "
    "knocked out the power along the whole coast, and the keeper lit the old oil lamps by hand. He stayed awake "
    "until morning, watching the dark water and listening to the wind. When the sun finally rose, three fishing "
    "boats came home to the harbor, and the whole village gathered on the pier to thank him. He only smiled, "
    "drank a cup of hot tea, and went upstairs to sleep."
)
TTS_TEXT = (
    "Good morning, and welcome to the weekly team update. The new release shipped on Tuesday without any major "
    "problems. Download numbers are up by twelve percent compared with last month. The support queue is shorter "
    "than it has been all year. We still need to finish the documentation for the audio features. Please review "
    "the open pull requests before Friday afternoon. The office will be closed next Monday for the public holiday. "
    "Lunch on Thursday is provided by the design team. If you have questions, post them in the usual channel. "
    "Thank you all for another productive week."
)
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's and the daemon's fallback schedule
GOAL_STT_RATIO = 0.95


def to_wav(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams((1, 2, rate, 0, "NONE", "not compressed"))
        w.writeframes(pcm)
    return buf.getvalue()


def stt_daemon(client: httpx.Client, wav: bytes) -> tuple[float, str]:
    fields = {"model": WHISPER_TINY, "response_format": "json", "language": "en", "vad_filter": "true"}
    t0 = time.perf_counter()
    resp = client.post("/v1/audio/transcriptions", files={"file": ("speech.wav", wav, "audio/wav")}, data=fields)
    dt = time.perf_counter() - t0
    if resp.status_code != 200:
        raise RuntimeError(f"transcription: daemon answered {resp.status_code}: {resp.text}")
    return dt, resp.json()["text"]


def stt_local(model: WhisperModel, wav: bytes) -> tuple[float, str]:
    t0 = time.perf_counter()
    audio = decode_audio(io.BytesIO(wav))
    segments, _ = model.transcribe(
        audio, language="en", task="transcribe", beam_size=5, vad_filter=True, temperature=TEMPERATURES
    )
    text = "".join(s.text for s in segments)
    return time.perf_counter() - t0, text


def tts_daemon(client: httpx.Client, fmt: str) -> tuple[float, float, int]:
    """(first body chunk s, last body chunk s, bytes) of one streamed speech request."""
    body = {"model": JOE, "input": TTS_TEXT, "response_format": fmt}
    first = last = 0.0
    size = 0
    t0 = time.perf_counter()
    with client.stream("POST", "/v1/audio/speech", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"speech ({fmt}): daemon answered {resp.status_code}: {resp.read().decode()}")
        for chunk in resp.iter_raw():
            if chunk:
                last = time.perf_counter() - t0
                first = first or last
                size += len(chunk)
    return first, last, size


def tts_local(voice: PiperVoice) -> tuple[float, float, float]:
    """(first chunk s, whole text s, audio s) of synthesising TTS_TEXT here."""
    first = 0.0
    samples = 0
    t0 = time.perf_counter()
    for chunk in voice.synthesize(TTS_TEXT):
        samples += len(chunk.audio_int16_bytes) // 2
        first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0, samples / voice.config.sample_rate


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    ap.add_argument("--json", action="store_true", help="print all numbers as one JSON object")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    home = Path(tempfile.mkdtemp(prefix="tqv", dir="/tmp"))
    paths = {s.name: s.path for s in bundled_models(home / "data") if s.path is not None}
    if WHISPER_TINY not in paths or JOE not in paths:
        sys.exit(f"bundled models missing: need {WHISPER_TINY} and {JOE}, found {sorted(paths)}")
    t0 = time.perf_counter()
    voice = PiperVoice.load(paths[JOE], config_path=f"{paths[JOE]}.json", use_cuda=False)
    local_load = {"tts": time.perf_counter() - t0}
    rate = voice.config.sample_rate
    wav = to_wav(b"".join(c.audio_int16_bytes for c in voice.synthesize(STT_TEXT)), rate)
    audio_s = (len(wav) - 44) / 2 / rate

    env = {**os.environ, "TIQO_HOME": str(home)}
    proc, client = start_daemon(home, env)
    try:
        for name in (WHISPER_TINY, JOE):
            client.post(f"/tiqo/models/{name}/load", json={"keep_alive": "-1"}).raise_for_status()
        ps = {m["name"]: m for m in client.get("/tiqo/ps").json()["models"]}
        rss_loaded = psutil.Process(proc.pid).memory_info().rss
        threads = int(ps[WHISPER_TINY]["details"]["n_threads"])
        t0 = time.perf_counter()
        whisper = WhisperModel(str(paths[WHISPER_TINY]), device="cpu", compute_type="int8", cpu_threads=threads)
        local_load["stt"] = time.perf_counter() - t0

        texts = {"daemon": stt_daemon(client, wav)[1], "inproc": stt_local(whisper, wav)[1]}  # warm-up
        for fmt in ("wav", "mp3"):
            tts_daemon(client, fmt)
        tts_local(voice)
        stt: dict[str, list[float]] = {"daemon": [], "inproc": []}
        tts: dict[str, list[float]] = {k: [] for k in ("wav_first", "wav_last", "mp3_first", "mp3_last")}
        tts.update(local_first=[], local_total=[])
        sizes: dict[str, int] = {}
        for i in range(args.runs):
            for side in ("daemon", "inproc") if i % 2 == 0 else ("inproc", "daemon"):  # alternate who goes first
                dt, texts[side] = stt_daemon(client, wav) if side == "daemon" else stt_local(whisper, wav)
                stt[side].append(dt / audio_s)
            for side in ("daemon", "inproc") if i % 2 == 0 else ("inproc", "daemon"):
                if side == "inproc":
                    first, total, tts_audio_s = tts_local(voice)
                    tts["local_first"].append(first)
                    tts["local_total"].append(total)
                for fmt in ("wav", "mp3") if side == "daemon" else ():
                    first, last, sizes[fmt] = tts_daemon(client, fmt)
                    tts[f"{fmt}_first"].append(first)
                    tts[f"{fmt}_last"].append(last)
        rss_end = psutil.Process(proc.pid).memory_info().rss
    except BaseException:
        print(f"benchmark failed; daemon log kept at {home}/logs/daemon.log", file=sys.stderr)
        raise
    finally:
        stop_daemon(proc, client)
    shutil.rmtree(home, ignore_errors=True)

    d_rtf, p_rtf = statistics.median(stt["daemon"]), statistics.median(stt["inproc"])
    tt = {k: stats(v) for k, v in tts.items()}
    local_total = tt["local_total"]["median"]
    res: dict[str, Any] = {
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "whisper": ps[WHISPER_TINY]["details"],
        "piper": ps[JOE]["details"],
        "stt": {
            "audio_s": round(audio_s, 2),
            "rtf_daemon": stats(stt["daemon"]),
            "rtf_inproc": stats(stt["inproc"]),
            "speed_ratio": p_rtf / d_rtf,  # daemon speed / in-process speed = in-process RTF / daemon RTF
            "goal_met": p_rtf / d_rtf >= GOAL_STT_RATIO,
            "same_text": texts["daemon"].strip() == texts["inproc"].strip(),
            "text_daemon": texts["daemon"].strip(),
        },
        "tts": {
            "audio_s": round(tts_audio_s, 2),
            **tt,
            "bytes": sizes,
            "first_audio_sooner": {f: local_total / tt[f"{f}_first"]["median"] for f in ("wav", "mp3")},
            "total_overhead": {f: tt[f"{f}_last"]["median"] / local_total for f in ("wav", "mp3")},
        },
        "daemon_rss_bytes": {"models_loaded": rss_loaded, "after_runs": rss_end},
        "load_s_daemon": {n: ps[n]["load_seconds"] for n in (WHISPER_TINY, JOE)},
        "load_s_inproc": {WHISPER_TINY: local_load["stt"], JOE: local_load["tts"]},
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return

    def mm(s: dict[str, float], scale: float = 1.0, f: str = ".3f") -> str:
        return f"median {s['median'] * scale:{f}} (min {s['min'] * scale:{f}}, max {s['max'] * scale:{f}})"

    s = res["stt"]
    print(f"{args.runs} runs, {os.cpu_count()} CPUs; whisper {res['whisper']}; piper {res['piper']}")
    print(f"STT, {audio_s:.1f} s of piper speech (WAV {rate} Hz), real-time factor (lower is faster):")
    print(f"  daemon      {mm(s['rtf_daemon'])}")
    print(f"  in-process  {mm(s['rtf_inproc'])}")
    verdict = "met" if s["goal_met"] else "NOT met"
    print(f"  speed ratio daemon/in-process: {s['speed_ratio']:.3f}x   (goal >= {GOAL_STT_RATIO}: {verdict})")
    print(f"  same transcript both sides: {s['same_text']}; daemon heard: {s['text_daemon'][:100]!r}...")
    print(f"TTS, 10 sentences ({len(TTS_TEXT)} chars, {tts_audio_s:.1f} s of audio), ms:")
    for key, label in [(f"{f}_{e}", f"daemon {f} {e} chunk ") for f in ("wav", "mp3") for e in ("first", "last")]:
        print(f"  {label:24}{mm(tt[key], 1000, '.0f')}" + (f"   ({sizes[key[:3]]} bytes)" if "last" in key else ""))
    print(f"  in-process first chunk  {mm(tt['local_first'], 1000, '.0f')}")
    print(f"  in-process whole text   {mm(tt['local_total'], 1000, '.0f')}")
    for f in ("wav", "mp3"):
        print(
            f"  {f}: first audio {res['tts']['first_audio_sooner'][f]:.1f}x sooner than in-process whole text; "
            f"daemon total / in-process total {res['tts']['total_overhead'][f]:.3f}"
        )
    mib = 1024 * 1024
    print(f"daemon RSS: {rss_loaded / mib:.0f} MiB with both models loaded, {rss_end / mib:.0f} MiB after the runs")
    for n in (WHISPER_TINY, JOE):
        print(f"load {n}: daemon {ps[n]['load_seconds']:.2f} s (/tiqo/ps), in-process {res['load_s_inproc'][n]:.2f} s")


if __name__ == "__main__":
    main()
